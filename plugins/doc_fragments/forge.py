# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The GitHub API options of every testfleet.infra GitHub module (the forge family of module_utils/module.py).
    DOCUMENTATION = r"""
options:
  api_url:
    description:
      - Base URL of the GitHub REST API. For GitHub Enterprise Server, C(https://HOST/api/v3).
    type: str
    default: https://api.github.com
  token:
    description:
      - A GitHub token (personal access token or installation token) with the permissions the
        module needs.
      - Prefer O(token_file), which keeps the token out of the task and its logs.
      - Exactly one of O(token), O(token_file) and O(app_id) is required.
    type: str
  token_file:
    description:
      - File on the managed host holding the GitHub token (surrounding whitespace is ignored).
      - Its content is read when connecting and never returned or logged.
    type: path
  app_id:
    description:
      - Authenticate as this GitHub App's installation O(installation_id), with the app's
        private key in O(app_key_file). The module gets an installation token and uses it.
    type: int
  app_key_file:
    description:
      - File on the managed host holding the private key (PEM) of the GitHub App O(app_id).
    type: path
  installation_id:
    description:
      - The installation of the GitHub App O(app_id) on the repository's account.
    type: int
  etag_cache_dir:
    description:
      - Directory (created when missing, mode 0700) where answers are kept with their ETags and
        shared with other processes, so that asking again for something unchanged is a
        conditional request that does not count against the rate limit.
      - Without it, the cache lives only as long as the module runs.
    type: path
  timeout:
    description:
      - Seconds to wait for each answer from GitHub.
    type: float
    default: 30.0
  retries:
    description:
      - How often a request is retried after a transient failure (HTTP 502, 503, 504, a
        connection failure) or a rate limit GitHub asks to wait for.
    type: int
    default: 3
  max_wait:
    description:
      - The longest wait, in seconds, for a rate limit to reset or for a C(Retry-After) GitHub
        asked for. A longer one fails the task, saying when to retry.
    type: float
    default: 60.0
requirements:
  - PyGithub 2.x (Python library, on the managed host; tested with 2.10)
"""
