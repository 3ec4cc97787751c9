# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The progress options of the modules that move images (the progress family of
    # module_utils/module.py).
    DOCUMENTATION = r"""
options:
  progress_log:
    description:
      - A file that gets a progress line every O(progress_interval) seconds while the module
        works (a module cannot show output while it runs; follow it with C(tail -f)).
    type: path
  progress_interval:
    description:
      - Seconds between two lines of O(progress_log).
    type: float
    default: 10.0
"""
