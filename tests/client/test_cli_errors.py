"""The command line fails politely: each user error is one line on stderr saying what happened and what to do,
with the exit code `--help` documents (0 succeeded, 1 job failed or cancelled, 2 usage, 3 unreachable or not
allowed); a traceback only with --debug."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

import cm3leon_client as api
from cm3leon_cli import app
from cm3leon_client import Client
from cm3leon_client.cli.errors import EXIT_CODES_HELP, ExitCode, run
from services.stack import ROOT

pytestmark = pytest.mark.slow  # a real stack (tests/serving/conftest.py)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(app, list(args), prog_name="cm3leon")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_unreachable_gateway_is_exit_3_with_what_to_do(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{closed_port()}"
    code, _, err = cli(capsys, "jobs", "list", "--target", target, "--api-key", "k")
    line = one_line(err)
    assert code == ExitCode.UNREACHABLE == 3
    assert f"the gateway at {target}" in line and "cm3leon stack up" in line and "CM3LEON_TARGET" in line


def test_the_installed_entry_point_prints_no_traceback_and_debug_does() -> None:
    target = f"127.0.0.1:{closed_port()}"
    command = [sys.executable, "-c", "import cm3leon_cli; cm3leon_cli.main()", "jobs", "get", "x", "--target", target]
    quiet = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 3 and one_line(quiet.stderr).startswith("error: cannot reach the gateway")
    loud = subprocess.run([*command, "--debug"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loud.returncode != 0 and "Traceback" in loud.stderr


def test_bad_key_is_exit_3(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "jobs", "list", "--target", target, "--api-key", "wrong-key")
    line = one_line(err)
    assert code == ExitCode.UNREACHABLE
    assert "refused the API key" in line and "CM3LEON_API_KEY" in line


def test_unknown_job_is_exit_2(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "jobs", "get", "no-such-job", "--target", target, "--api-key", "key-a")
    line = one_line(err)
    assert code == ExitCode.USAGE
    assert line.startswith("error: not found:") and "cm3leon jobs list" in line


def test_invalid_argument_from_the_server_is_exit_2_naming_the_field(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--target", target, "--api-key", "key-a"]
    code, _, err = cli(capsys, "jobs", "submit", "text-to-image", "a red circle", "--num-images", "99", *args)
    line = one_line(err)
    assert code == ExitCode.USAGE
    assert "rejected the request" in line and "num_images" in line


def test_wrong_path_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    code, _, err = cli(capsys, "jobs", "submit", "caption", str(missing), "--target", f"127.0.0.1:{closed_port()}")
    assert code == ExitCode.USAGE and one_line(err) == f"error: no such file or directory: {missing}; check the path"


def test_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "jobs", "submit", "infill", "key:x.png", "--regions", "1,2,3")
    assert code == 2 and "is not X0,Y0,X1,Y1" in one_line(err) and "cm3leon jobs submit infill --help" in err
    code, _, err = cli(capsys, "jobs", "submit", "paint", "x")
    assert code == 2 and "No such command 'paint'" in one_line(err)


def test_the_core_names_the_vq_folder(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "eval", "vq", "--checkpoint", str(ROOT / "models" / "shapes"), "--n", "1")
    line = one_line(err)
    assert code == 2 and f"--checkpoint {ROOT / 'models' / 'shapes' / 'vq'}" in line


def test_a_cancelled_job_is_exit_1(client: Client, target: str, capsys: pytest.CaptureFixture[str]) -> None:
    job = client.submit(api.text_to_image("a large red circle", seed=3))
    client.cancel(job.job_id)
    code, out, _ = cli(capsys, "jobs", "watch", job.job_id, "--target", target, "--api-key", "key-a")
    assert code == ExitCode.JOB_FAILED == 1 and "CANCELLED" in out.splitlines()[-1]


def test_exit_codes_are_documented_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "jobs", "--help")
    assert code == 0
    for number in "0123":
        assert f"{number} " in EXIT_CODES_HELP
    assert "Exit codes: 0 succeeded" in " ".join(out.split())


def test_grpc_errors_of_a_client_are_plain_rpc_errors(target: str) -> None:
    """The SDK raises grpc.RpcError (the CLI only translates it)."""
    with Client(target, "key-a") as client, pytest.raises(grpc.RpcError) as raised:
        client.get("no-such-job")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
