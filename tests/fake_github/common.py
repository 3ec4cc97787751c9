# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every part of the fake GitHub uses: limits, GitHub's error bodies, ids.

A handler raises :class:`_Answer` (or what :func:`_error` makes) to answer at once.
"""

from __future__ import annotations

import base64
import re

DOCS_URL = "https://docs.github.com/rest"
PERMISSIONS = ("admin", "maintain", "write", "triage", "read", "none")
LEGACY_PERMISSION = {"admin": "admin", "maintain": "write", "write": "write", "triage": "read",
                     "read": "read", "none": "none"}
STATUS_STATES = ("pending", "success", "failure", "error")
MAX_DESCRIPTION = 140
MAX_STATUSES = 1000              # per SHA and context
DEFAULT_RATE_LIMIT = 5000
RATE_WINDOW = 3600
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100
INSTALLATION_TOKEN_LIFETIME = 3600
MAX_JWT_LIFETIME = 600           # GitHub refuses an app JWT that expires more than 10 min ahead
CLOCK_SKEW = 60
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
HEX_REF_RE = re.compile(r"^[0-9a-f]{4,40}$")
SECONDARY_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
    "If you reach out to GitHub Support for help, please include the request ID FAKE.")
DEFAULT_BODIES = {
    304: None,
    400: {"message": "Problems parsing JSON"},
    401: {"message": "Bad credentials"},
    403: {"message": SECONDARY_LIMIT_MESSAGE,
          "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
                               "#about-secondary-rate-limits"},
    404: {"message": "Not Found"},
    409: {"message": "Conflict"},
    422: {"message": "Validation Failed"},
    429: {"message": SECONDARY_LIMIT_MESSAGE},
    500: {"message": "Server Error"},
    502: {"message": "Server Error"},
    503: {"message": "Service Unavailable"},
    504: {"message": "We couldn't respond to your request in time. Sorry about that. "
                     "Please try resubmitting your request and contact us if the problem persists."},
}


class _Answer(Exception):
    """Raised inside a handler to answer at once (errors); ``payload`` is the JSON body."""

    def __init__(self, status, payload=None, headers=None):
        super().__init__("%s %s" % (status, (payload or {}).get("message", "")))
        self.status = status
        self.payload = payload
        self.headers = dict(headers or {})


def _error(status, message, errors=None):
    body = {"message": message}
    if errors is not None:
        body["errors"] = errors
    body.update({"documentation_url": DOCS_URL, "status": str(status)})
    return _Answer(status, body)


def _validation_failed(resource, message, field=None):
    error = {"resource": resource, "code": "custom", "message": message}
    if field:
        error["field"] = field
    return _error(422, "Validation Failed", [error])


def _not_found():
    return _error(404, "Not Found")


def _node_id(kind, number):
    return base64.b64encode(("0%d:%s%d" % (len(kind), kind, number)).encode()).decode()


def _b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _first(query, name, default=None):
    values = query.get(name)
    return values[-1] if values else default
