"""A model directory's lock, identity record and traces (lowtf.train.rundir)."""

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import lowtf
from lowtf.train import rundir


def test_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with rundir.RunLock(str(tmp_path)) as lock:
        assert json.loads((tmp_path / "lock").read_text()) == rundir.this_process()

        # A call made from inside the holder nests (run_job around fit): not
        # refused, and its release leaves the lock held.
        def inner():
            nested = rundir.RunLock(str(tmp_path))
            nested.acquire()
            nested.release()
            return nested.held

        assert inner() is False
        assert lock.held and (tmp_path / "lock").exists()
        # A second acquire beside the first, in this thread or another: refused.
        with pytest.raises(ValueError, match=r"in use by another run \(this thread of"):
            rundir.RunLock(str(tmp_path)).acquire()
        errors = []

        def other_thread():
            try:
                rundir.RunLock(str(tmp_path / ".")).acquire()
            except ValueError as error:
                errors.append(str(error))

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert len(errors) == 1 and "(another thread of this process" in errors[0]
        # Another live process of this host (pid 1, init) holds it: refused.
        init = {
            **rundir.this_process(),
            "pid": 1,
            "start": int(
                (pathlib.Path("/proc/1/stat").read_text().rsplit(")", 1)[1]).split()[19]
            ),
        }
        (tmp_path / "lock").write_text(json.dumps(init))
        with pytest.raises(ValueError, match=r"in use by another run \(pid 1 on"):
            rundir.RunLock(str(tmp_path)).acquire()
    assert not (tmp_path / "lock").exists()


def _owner(**changes):
    return {**rundir.this_process(), **changes}


@pytest.mark.parametrize(
    "changes, state",
    [
        ({}, rundir.SELF),
        # This pid, another start: a dead owner whose pid this process reuses
        # (a restarted container, a rerun in a new pid namespace).
        ({"start": 1}, rundir.GONE),
        # pid 1 runs, but it is not the recorded process (another start time).
        ({"pid": 1, "start": 1}, rundir.GONE),
        ({"pid": 2**22 + 1}, rundir.GONE),  # above pid_max: no such process
        ({"boot": "another-boot"}, rundir.GONE),  # the machine restarted
        ({"pidns": 1}, rundir.GONE),  # a pid namespace not to be found here
        ({"host": "elsewhere", "start": 1}, rundir.RUNNING),  # cannot be checked
        # A record of an older lowtf: host and pid only.
        ({"start": None, "boot": None, "pidns": None, "pid": 1}, rundir.RUNNING),
        ({"start": None, "boot": None, "pidns": None}, rundir.GONE),
    ],
)
def test_an_owner_is_told_by_more_than_host_and_pid(changes, state):
    owner = {k: v for k, v in _owner(**changes).items() if v is not None}
    assert rundir.owner_state(owner) == state


def test_a_lock_whose_pid_this_process_reuses_is_taken_over(tmp_path):
    # The holder had this process's pid before a restart: gone, not this run.
    (tmp_path / "lock").write_text(json.dumps(_owner(start=1)))
    lines = []
    with rundir.RunLock(str(tmp_path), log=lines.append):
        assert json.loads((tmp_path / "lock").read_text()) == rundir.this_process()
    assert lines == [
        f"taking over the stale lock {tmp_path / 'lock'} (pid {os.getpid()}, not running)"
    ]


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_log_line(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    (tmp_path / "lock").write_text(
        json.dumps({"host": socket.gethostname(), "pid": pid})
    )
    lines = []
    with rundir.RunLock(str(tmp_path), log=lines.append):
        assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    assert lines == [
        f"taking over the stale lock {tmp_path / 'lock'} (pid {pid}, not running)"
    ]


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / "lock").write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(ValueError, match="pid 1 on elsewhere"):
        rundir.RunLock(str(tmp_path)).acquire()
    assert json.loads((tmp_path / "lock").read_text())["host"] == "elsewhere"


def test_lock_on_a_tensorflow_file_system():
    path = "ram://lowtf_rundir_lock/run"
    with rundir.RunLock(path):
        # Removed first: TF 2.21's ram:// GFile "w" appends to an existing file.
        tf.io.gfile.remove(path + "/lock")
        with tf.io.gfile.GFile(path + "/lock", "w") as f:
            f.write(json.dumps({"host": "elsewhere", "pid": 7}))
        with pytest.raises(ValueError, match="in use by another run"):
            rundir.RunLock(path).acquire()
        tf.io.gfile.remove(path + "/lock")
        with tf.io.gfile.GFile(path + "/lock", "w") as f:
            f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    assert not tf.io.gfile.exists(path + "/lock")


@pytest.mark.parametrize("name", ["run[1]", "a*b", "what?"])
def test_glob_characters_are_refused(name):
    with pytest.raises(ValueError, match="glob pattern"):
        rundir.check_path(f"/tmp/{name}")
    rundir.check_path("/tmp/run-1_ok.d")


def test_identity_lists_each_differing_setting_with_both_values():
    rs = np.random.RandomState(0)
    train = (rs.randn(20, 4).astype(np.float32), np.arange(20) % 2)
    val = (rs.randn(8, 4).astype(np.float32), np.arange(8) % 2)

    def ident(activation="elu", dropout=0.0, x=train[0], seed=0):
        model = lowtf.mlp(
            [8], num_classes=2, activation=activation, dropout=dropout, seed=seed
        )
        model(x[:1])
        return rundir.identity(
            model=model,
            optimizer=tf.keras.optimizers.Adam(1e-3),
            train=(x, train[1]),
            validation=val,
            settings={"seed": seed, "batch_size": 4},
        )

    base = ident()
    assert rundir.differences(base, ident()) == []
    assert base["train_data"] == rundir.fingerprint(*train)
    changed = rundir.differences(base, ident(activation="relu", dropout=0.2, seed=1))
    assert any(
        "activation" in line and "elu" in line and "relu" in line for line in changed
    )
    assert any("rate" in line and "0.2" in line for line in changed)
    assert "seed: recorded 0, now 1" in changed
    other_rows = train[0].copy()
    other_rows[3, 1] += 1.0
    assert [
        line.split(":")[0] for line in rundir.differences(base, ident(x=other_rows))
    ] == ["train_data"]


def test_record_round_trip_and_damaged_records(tmp_path):
    rundir.write_record(str(tmp_path), {"identity": {"seed": 3}})
    assert rundir.read_record(str(tmp_path)) == {"identity": {"seed": 3}}
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a lowtf run record"):
        rundir.read_record(str(tmp_path))
    (tmp_path / "run.json").write_text("{trunc")
    with pytest.raises(ValueError, match="cannot be read"):
        rundir.read_record(str(tmp_path))


def test_traces_name_what_an_earlier_run_left(tmp_path):
    assert rundir.traces(str(tmp_path / "missing")) == []
    (tmp_path / "best").mkdir()
    (tmp_path / "history.csv").write_text("step\n")
    (tmp_path / "run.json").write_text("{}")
    assert rundir.traces(str(tmp_path)) == ["best", "history.csv"]


def _unshare_works() -> bool:
    try:
        run = subprocess.run(
            ["unshare", "--pid", "--fork", "true"],
            check=False,
            capture_output=True,
            timeout=30,
        )
        return run.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _read(path):
    try:
        return pathlib.Path(path).read_text().strip()
    except OSError:
        return None


@pytest.mark.skipif(
    not _unshare_works(), reason="unshare --pid --fork is unavailable here"
)
def test_an_owner_in_another_pid_namespace_is_found_while_it_runs():
    process = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "sleep", "60"]
    )
    try:
        children = pathlib.Path(f"/proc/{process.pid}/task/{process.pid}/children")
        for _ in range(3000):  # until the child runs sleep (past unshare's set-up)
            pids = children.read_text().split() if children.exists() else []
            if pids and _read(f"/proc/{pids[0]}/comm") == "sleep":
                break
            time.sleep(0.01)
        child = int(children.read_text().split()[0])
        stat = pathlib.Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        owner = _owner(
            pid=1, start=int(stat[19]), pidns=os.stat(f"/proc/{child}/ns/pid").st_ino
        )
        # pid 1 of its own namespace: not our pid 1 (init), and found alive.
        assert rundir.owner_state(owner) == rundir.RUNNING
    finally:
        process.kill()
        process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signal.SIGKILL)
    for _ in range(3000):  # up to 30 s on a busy machine; a zombie counts as ended
        state = _read(f"/proc/{child}/stat")
        if state is None or state.rsplit(")", 1)[1].split()[0] in "ZX":
            break
        time.sleep(0.01)
    assert rundir.owner_state(owner) == rundir.GONE
