# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Makes ``ansible_collections.testfleet.infra`` importable for the benchmarks, as bin/testfleet does."""

import importlib.machinery
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_collection():
    loader = importlib.machinery.SourceFileLoader("testfleet_launcher",
                                                  os.path.join(ROOT, "bin", "testfleet"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    launcher = importlib.util.module_from_spec(spec)
    loader.exec_module(launcher)
    sys.path.insert(0, launcher.collection_search_path(os.path.realpath(ROOT)))
