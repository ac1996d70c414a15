"""`curaclip` reports a part that failed for good (tasks.stages.common.PartFailedError, issue 15) as one line
naming the stage, the step and the part, and exits 2, as it does a full disk. The stage runs in this process on
the in-process executor; only the command's body is replaced."""

from pathlib import Path

from flows import cli
from tasks.stages.common import RunContext, StageRun
from tasks.store.artifacts import Staging
from tests.tasks.executors.units import Attempts


def test_a_part_out_of_memory_is_one_line_and_exit_status_2(tmp_path: Path, monkeypatch, capsys, reliability):
    unit = Attempts(0, str(tmp_path / "attempts.log"), failures=-1)  # a real MemoryError, every attempt

    def run_out_of_memory(args) -> int:
        ctx = RunContext(workdir=args.workdir, run_id="cli", executor="local")
        StageRun(ctx, "curate", Staging(tmp_path / "staging"), {}).map("match", [unit])
        return 0

    monkeypatch.setattr(cli, "_run", run_out_of_memory)
    assert cli.main(["run", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"curaclip run: error: stage curate, step match: part 1 of 1 (Attempts writing {unit.out}) "
                          "ran out of memory after 1 attempt. Raise resources.curate.memory_gb")
    reliability.fault("MemoryError in a unit", "curaclip run")
