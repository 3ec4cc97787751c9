# -*- coding: utf-8 -*-
# Copyright: testfleet developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one Prometheus text renderer of testfleet's programs (exposition format 0.0.4).

``testfleet-webhook`` serves its metrics on ``GET /metrics``; each ``testfleet-worker`` slot
writes them to a node_exporter textfile. Both render them here, so escaping, number format and
the HELP/TYPE lines are the same everywhere. A few counters and histograms do not justify a
dependency on prometheus_client.

- :class:`Counter` and :class:`Histogram`: series kept in dicts keyed by label values;
  ``render(const_labels)`` gives their lines, with ``const_labels`` (pairs) before each
  series' own labels (the worker's ``host`` and ``slot``);
- :func:`family`: the lines of a metric whose samples are read when rendering (a gauge, a
  counter kept elsewhere);
- :func:`labels`, :func:`number`, :func:`escape`: the pieces, for what does not fit the above.

Label values are escaped (``\\``, ``"``, line feed), HELP texts too (``\\``, line feed); numbers
are written as Prometheus' own client writes them: integers plainly, floats at their shortest
exact form (``0.25``, ``1e-05``), ``+Inf``, ``-Inf``, ``NaN``. Series come out sorted by their
label values, so a text is the same for the same state.
"""

from __future__ import annotations

import bisect
import math

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def escape(value):
    """A label value escaped for the text format."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text):
    return str(text).replace("\\", "\\\\").replace("\n", "\\n")


def labels(pairs):
    """``{name="value",...}`` of ``(name, value)`` pairs; empty text for no pairs."""
    pairs = list(pairs)
    if not pairs:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (name, escape(value)) for name, value in pairs)


def number(value):
    """A sample value or bucket bound as the text format writes it."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return str(value)


def header(name, kind, help_text):
    """The ``# HELP`` and ``# TYPE`` lines of a metric family."""
    return ["# HELP %s %s" % (name, _escape_help(help_text)), "# TYPE %s %s" % (name, kind)]


def family(name, kind, help_text, samples, const_labels=()):
    """The lines of a metric family: its header and one line a ``(label pairs, value)`` sample."""
    const_labels = list(const_labels)
    lines = header(name, kind, help_text)
    for pairs, value in samples:
        lines.append("%s%s %s" % (name, labels(const_labels + list(pairs)), number(value)))
    return lines


class Counter:
    """A counter with the label names ``label_names``; ``values`` maps label values to counts."""

    def __init__(self, name, help_text, label_names=()):
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self.values = {}

    def inc(self, *label_values, amount=1):
        self.values[label_values] = self.values.get(label_values, 0) + amount

    def get(self, *label_values):
        return self.values.get(label_values, 0)

    def render(self, const_labels=()):
        return family(self.name, "counter", self.help,
                      [(zip(self.label_names, key), self.values[key]) for key in sorted(self.values)],
                      const_labels)


class Histogram:
    """A histogram with the upper bounds ``buckets`` and the label names ``label_names``.

    A series holds its count a bucket (not cumulated; the last one is ``+Inf``) and its sum;
    a value equal to a bound counts in that bound's bucket (``le``). Without labels the one
    series shows from the start (zero counts); with labels a series shows once observed.
    """

    def __init__(self, name, help_text, buckets, label_names=()):
        self.name = name
        self.help = help_text
        self.bounds = tuple(buckets)
        self.label_names = tuple(label_names)
        self.series = {}  # label values -> [[count a bucket..., +Inf], sum]
        if not self.label_names:
            self.series[()] = [[0] * (len(self.bounds) + 1), 0.0]  # shown before a first value

    def observe(self, value, *label_values):
        series = self.series.setdefault(label_values, [[0] * (len(self.bounds) + 1), 0.0])
        series[0][bisect.bisect_left(self.bounds, value)] += 1
        series[1] += value

    def count(self, *label_values):
        series = self.series.get(label_values)
        return sum(series[0]) if series else 0

    def sum(self, *label_values):
        series = self.series.get(label_values)
        return series[1] if series else 0.0

    def render(self, const_labels=()):
        lines = header(self.name, "histogram", self.help)
        const_labels = list(const_labels)
        for key in sorted(self.series):
            counts, total = self.series[key]
            pairs = const_labels + list(zip(self.label_names, key))
            cumulative = 0
            for bound, count in zip(self.bounds + (float("inf"),), counts):
                cumulative += count
                lines.append("%s_bucket%s %d" % (self.name, labels(pairs + [("le", number(bound))]),
                                                 cumulative))
            lines.append("%s_sum%s %s" % (self.name, labels(pairs), number(total)))
            lines.append("%s_count%s %d" % (self.name, labels(pairs), cumulative))
        return lines


def text(lines):
    """The exposition text of rendered lines (one line each, a final line feed)."""
    return "\n".join(lines) + "\n"
