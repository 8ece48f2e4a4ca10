#!/usr/bin/env python3
"""Checks that TensorBoard reads sigmatune's event files (formats/tfevents.h) as intended.

Run by hand in the golden venv (tensorboard installed):

  bazel build //formats:tfevents_demo
  rm -rf /tmp/st_tfevents && bazel-bin/formats/tfevents_demo /tmp/st_tfevents/run /tmp/st_tfevents/expected.json
  /root/venv-golden/bin/python tools/tfevents_check.py /tmp/st_tfevents/run /tmp/st_tfevents/expected.json

Loads LOGDIR with tensorboard.backend.event_processing.event_accumulator.EventAccumulator (all
points kept, orphan purging on, as TensorBoard runs it), prints every scalar series, and compares
with EXPECTED_JSON ({"file_version": ..., "scalars": {tag: [[step, wall_time, value], ...]}}, as
written by tfevents_demo): the same tags, and per tag the same steps, wall times and float32 values
in order. It also checks that no event file was skipped as corrupt (the accumulator's
data-loss counters, where the installed version has them). Writes nothing; exits non-zero on the
first mismatch.
"""

import json
import math
import os
import struct
import sys

import tensorboard
from tensorboard.backend.event_processing import event_accumulator


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def main(argv):
    if len(argv) != 3:
        print(__doc__)
        return 2
    logdir, expected_path = argv[1], argv[2]
    with open(expected_path) as f:
        expected = json.load(f)

    files = sorted(n for n in os.listdir(logdir) if "tfevents" in n)
    print(f"tensorboard {tensorboard.__version__}; event files in {logdir}: {files}")
    if not files:
        fail(f"no event file in {logdir}")

    acc = event_accumulator.EventAccumulator(
        logdir, size_guidance={event_accumulator.SCALARS: 0}, purge_orphaned_data=True)
    acc.Reload()

    if str(acc.file_version) != "2.0" and acc.file_version != 2.0:
        fail(f"file_version parsed as {acc.file_version!r}, expected 2 ({expected['file_version']})")
    print(f"file_version: {acc.file_version}")

    tags = sorted(acc.Tags()[event_accumulator.SCALARS])
    want_tags = sorted(expected["scalars"])
    if tags != want_tags:
        fail(f"scalar tags {tags} != expected {want_tags}")

    for tag in tags:
        got = acc.Scalars(tag)
        want = expected["scalars"][tag]
        print(f"{tag}: " + ", ".join(f"{e.step}:{e.value:.6g}" for e in got))
        if len(got) != len(want):
            fail(f"{tag}: {len(got)} points, expected {len(want)}")
        for e, (step, wall_time, value) in zip(got, want):
            if e.step != step:
                fail(f"{tag}: step {e.step}, expected {step}")
            if e.wall_time != wall_time:
                fail(f"{tag} step {step}: wall_time {e.wall_time!r}, expected {wall_time!r}")
            if not (e.value == f32(value) or (math.isnan(e.value) and math.isnan(value))):
                fail(f"{tag} step {step}: value {e.value!r}, expected {f32(value)!r}")

    # Newer TensorBoard versions count records skipped for CRC errors.
    for attr in ("_num_corrupt_events", "corrupt_events"):
        if getattr(acc, attr, 0):
            fail(f"TensorBoard reported corrupt records ({attr} = {getattr(acc, attr)})")
    print(f"OK: {len(tags)} tags, {sum(len(v) for v in expected['scalars'].values())} points match")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
