"""The command line as a user runs it: ``main(argv)`` on tiny synthetic data, checking what it wrote."""

from __future__ import annotations

import csv
import json

import pytest

from lungcad.cli import SEG_ARCHS, CLS_ARCHS, build_parser, main
from lungcad.models import CLASSIFIERS, SEGMENTERS


def test_cli_lists_exactly_the_registered_architectures():
    assert set(SEG_ARCHS) == set(SEGMENTERS)
    assert set(CLS_ARCHS) == set(CLASSIFIERS)


def test_cli_tta_choices_are_the_inferer_s():
    from lungcad.inference import TTA_FLIPS

    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    for name in ("evaluate", "predict"):
        (option,) = [a for a in commands[name]._actions if a.dest == "tta"]  # noqa: SLF001
        assert set(option.choices) == set(TTA_FLIPS) and option.default is None
        (peak,) = [a for a in commands[name]._actions if a.dest == "min_peak"]  # noqa: SLF001
        assert peak.type is float and peak.default is None


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public accessor
    assert {"synth", "ingest", "split", "train-seg", "train-cls", "evaluate", "leaderboard", "predict",
            "export-onnx", "demo"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: lungcad " + name in capsys.readouterr().out


def test_synth_ingest_split_through_the_cli(tmp_path, capsys):
    raw, bench = tmp_path / "raw", tmp_path / "bench"
    assert main(["synth", "--out", str(raw), "--patients", "2", "--size", "64", "--slices", "12",
                 "--sources", "lidc-idri", "msd-lung", "lung-pet-ct-dx"]) == 0
    assert main(["ingest", "--source", f"lidc-idri={raw / 'lidc-idri'}", "--source", f"msd-lung={raw / 'msd-lung'}",
                 "--source", f"lung-pet-ct-dx={raw / 'lung-pet-ct-dx'}", "--out", str(bench), "--quiet"]) == 0
    first = (bench / "manifest.csv").read_bytes()
    assert main(["split", str(bench)]) == 0
    rows = list(csv.DictReader((bench / "manifest.csv").open()))
    assert {r["dataset"] for r in rows} == {"lidc-idri", "msd-lung", "lung-pet-ct-dx"}
    assert all(r["split"] in ("train", "val", "test") for r in rows)
    assert all(r["patient_id"].startswith(r["dataset"] + "/") for r in rows)
    splits = json.loads((bench / "splits.json").read_text())
    seen = [p for part in splits["classification"].values() for p in part]
    assert len(seen) == len(set(seen)) == len({r["patient_id"] for r in rows})
    # re-running ingest resumes and leaves an identical manifest (apart from the split column it keeps)
    assert main(["ingest", "--source", f"lidc-idri={raw / 'lidc-idri'}", "--source", f"msd-lung={raw / 'msd-lung'}",
                 "--source", f"lung-pet-ct-dx={raw / 'lung-pet-ct-dx'}", "--out", str(bench), "--quiet"]) == 0
    again = list(csv.DictReader((bench / "manifest.csv").open()))
    assert again == rows
    assert len(first.splitlines()) == len(rows) + 1


def test_user_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["ingest", "--source", f"lidc-idri={tmp_path / 'nowhere'}", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lungcad: error:") and "Traceback" not in err and len(err.splitlines()) == 1
    assert main(["leaderboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lungcad: error:") and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exc:
        main(["ingest", "--source", "nonsense=/x", "--out", str(tmp_path)])
    assert exc.value.code == 2
    capsys.readouterr()
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text('{"task": "classification"}')
    for args, message in ((["--external"], "--external needs --bench"),
                          (["--external", "--compare", str(run)], "do not combine")):
        assert main(["evaluate", str(run), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lungcad: error:") and message in err and len(err.splitlines()) == 1
