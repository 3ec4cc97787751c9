# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``python tests/fake_github --port 8081 --repo owner/name``: serve a fake GitHub until interrupted."""

import os
import sys

if __package__ in (None, ""):  # run as a folder: import the package from its parent folder
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fake_github import main  # noqa: E402  pylint: disable=wrong-import-position

if __name__ == "__main__":
    main()
