"""config_info, run in-process on config files written here."""


def test_returns_the_sections_with_their_defaults(run_module, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("images:\n  store_url: s3://ci-images/images\n  keep_days: 7\n"
                      "forge:\n  token_file: /etc/testfleet/github-token\ntestmap: /etc/testfleet/testmap.yml\n")
    result = run_module("config_info", {"path": str(config), "sections": ["images", "forge"]})
    assert "failed" not in result, result
    assert result["changed"] is False and result["path"] == str(config)
    assert result["testmap"] == "/etc/testfleet/testmap.yml"
    images = result["config"]["images"]
    assert (images["store_url"], images["keep_days"], images["refs_file"], images["cache_dir"]) == (
        "s3://ci-images/images", 7, ".testfleet/images.yml", "/var/cache/testfleet/images")
    assert images["endpoint_url"] is None
    assert result["config"]["forge"] == {"api_url": "https://api.github.com",
                                         "token_file": "/etc/testfleet/github-token"}


def test_a_missing_required_key_or_a_bad_value_fails_naming_it(run_module, tmp_path):
    config = tmp_path / "config.yml"
    config.write_text("forge:\n  token_file: /x\n")
    missing = run_module("config_info", {"path": str(config), "sections": ["images"]})
    assert missing.get("failed") and missing["msg"] == (
        "%s: images.store_url is required (the file has no images section)" % config)
    config.write_text("images:\n  store_url: ftp://x/y\n")
    bad = run_module("config_info", {"path": str(config), "sections": ["images"]})
    assert bad.get("failed") and "images.store_url" in bad["msg"] and "s3://" in bad["msg"]
    config.write_text("images:\n  store_url: s3://b/p\n  secret_key: hunter2\n")
    secret = run_module("config_info", {"path": str(config), "sections": ["images"]})
    assert secret.get("failed") and "secret_key_file" in secret["msg"] and "hunter2" not in secret["msg"]
