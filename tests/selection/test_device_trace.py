"""Device profiles from a CSV trace (device-profile = "trace"), and its errors."""

from __future__ import annotations

import pytest

from fedpers.config import parse_run_config
from fedpers.devices import DeviceError, DeviceParams, DeviceProfile, build_clock, load_trace

HEADER = "partition-id,compute-sps,up-bps,down-bps,availability"


def write(tmp_path, text: str):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_trace_loads_one_profile_per_client(tmp_path):
    path = write(tmp_path, f"{HEADER},dropout,model\n"
                           "1,50,1e6,2e6,0.5,0.1,pixel\n"
                           "0,100,2000000,4000000,1.0,,iphone\n")
    profiles = load_trace(path, 2, dropout=0.05)
    assert profiles == {0: DeviceProfile(100.0, 2e6, 4e6, 1.0, 0.05),
                        1: DeviceProfile(50.0, 1e6, 2e6, 0.5, 0.1)}
    assert load_trace(path, 1) == {0: DeviceProfile(100.0, 2e6, 4e6, 1.0, 0.0)}  # extra rows
    cfg = parse_run_config({"num-clients": 2, "device-profile": "trace",
                            "device-trace": str(path), "device-dropout": 0.05})
    assert build_clock(DeviceParams.from_config(cfg)).profiles == profiles


@pytest.mark.parametrize("text, fragment", [
    ("partition-id,compute-sps,up-bps\n0,1,1\n", "lacks column(s) down-bps, availability"),
    ("", "lacks column(s) partition-id"),
    (f"{HEADER}\n0,100,1e6,1e6,1\n", "no row for partition-id(s) 1, 2"),
    (f"{HEADER}\n0,100,1e6,1e6,1\n1,fast,1e6,1e6,1\n2,1,1,1,1\n", "line 3"),
    (f"{HEADER}\n0,100,1e6,1e6,1\n1,0,1e6,1e6,1\n2,1,1,1,1\n", "line 3: compute-sps"),
    (f"{HEADER}\n0,100,1e6,1e6,1\n1,1,1,1,1.5\n2,1,1,1,1\n", "line 3: availability"),
    (f"{HEADER}\n0,100,1e6,1e6,1\n0,1,1,1,1\n2,1,1,1,1\n", "partition-id 0 appears twice"),
    (f"{HEADER}\n0,100,1e6,1e6,1\n1,1,1,1,\n2,1,1,1,1\n", "line 3"),
])
def test_bad_traces_fail_naming_the_problem(tmp_path, text, fragment):
    path = write(tmp_path, text)
    with pytest.raises(DeviceError) as err:
        load_trace(path, 3)
    assert fragment in str(err.value) and "trace.csv" in str(err.value)


def test_missing_trace_file(tmp_path):
    with pytest.raises(DeviceError, match="does not exist"):
        load_trace(tmp_path / "nope.csv", 3)
