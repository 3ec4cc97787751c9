"""The one S3 helper: client, error wording (never a secret) and the small operations."""

import uuid

import pytest

from ansible_collections.testfleet.infra.plugins.module_utils import s3

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


class ClientError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.response = {"Error": {"Code": code, "Message": message}}


def test_describe_error_hides_secrets_and_signed_queries():
    exc = ValueError("failed https://s3.example.org/b/k?X-Amz-Signature=abc&X-Amz-Credential=AKIA with %s" % SECRET)
    text = s3.describe_error(exc, secrets=(SECRET, None))
    assert SECRET not in text and "X-Amz-Signature" not in text
    assert text == "ValueError: failed https://s3.example.org/b/k with ********"


def test_failure_names_the_object_and_adds_the_hint_of_its_code():
    problem = s3.failure("upload", "bucket", "p/k", ClientError("NoSuchBucket", "The bucket does not exist"),
                         hints={"NoSuchBucket": "create it first"})
    assert str(problem) == ("S3 upload of s3://bucket/p/k failed: NoSuchBucket The bucket does not exist "
                            "(create it first)")
    assert problem.code == "NoSuchBucket"
    assert s3.is_missing(ClientError("NoSuchKey", "x")) and not s3.is_missing(ValueError("NoSuchKey"))


def test_operations_against_moto(moto_server):
    client = s3.make_client(endpoint_url=moto_server, region="us-east-1", access_key="testing",
                            secret_key="testing", retries=0)
    bucket = "s3-helper-%s" % uuid.uuid4().hex[:8]
    client.create_bucket(Bucket=bucket)
    s3.put_bytes(client, bucket, "p/a.json", b"{}", content_type="application/json",
                 metadata={"sha256": "x"}, cache_control="no-store")
    s3.put_bytes(client, bucket, "p/deeper/b", b"bb")
    head = client.head_object(Bucket=bucket, Key="p/a.json")
    assert (head["ContentType"], head["CacheControl"], head["Metadata"]) == ("application/json", "no-store",
                                                                             {"sha256": "x"})
    assert s3.get_bytes(client, bucket, "p/a.json") == b"{}"
    assert s3.get_bytes(client, bucket, "p/none") is None
    assert [key for key, size, modified in s3.list_objects(client, bucket, "p/", delimiter="/")] == ["p/a.json"]
    assert sorted((key, size) for key, size, modified in s3.list_objects(client, bucket, "p/")) == [
        ("p/a.json", 2), ("p/deeper/b", 2)]
    s3.delete_object(client, bucket, "p/a.json")
    s3.delete_object(client, bucket, "p/a.json")
    assert s3.get_bytes(client, bucket, "p/a.json") is None
    with pytest.raises(Exception) as raised:
        s3.get_bytes(client, "no-such-bucket-%s" % bucket, "k")
    assert "NoSuchBucket" in str(s3.failure("download", "x", "k", raised.value))


def test_bucket_and_prefix():
    from urllib.parse import urlsplit
    assert s3.bucket_and_prefix(urlsplit("s3://logs/ci/jobs/")) == ("logs", "ci/jobs")
    assert s3.bucket_and_prefix(urlsplit("s3:///x")) is None
