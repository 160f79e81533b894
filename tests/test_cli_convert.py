"""``culture-interp convert``: files written, table, round trip, one-line errors."""

import json
import subprocess
import sys
import textwrap

from culture import sources
from tests.cli import error_line, run_cli
from tests.helpers_sources import (
    TINY,
    TINY_4M_LIKE,
    accuracy_of,
    make_local_source,
    make_offline_hub_cache,
    make_zoo,
    random_quizzes,
    use_hub_env,
)


def test_convert_local_and_round_trip(tmp_path, capsys):
    from culture.hooked import load_converted, max_logit_diff
    from culture.mygpt import load_mygpt

    root = make_local_source(tmp_path, [TINY, TINY_4M_LIKE])
    out_dir = tmp_path / "converted"
    code, out, err = run_cli(capsys, "convert", "--models", "0", "1", "--source", str(root), "--out", str(out_dir),
                             "--n-quizzes", "3")
    assert code == 0, err
    assert "TransformerLens conversion" in out and "d_head" in out
    for k in (0, 1):
        d = out_dir / f"gpt-{k}"
        assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
        info = json.loads((d / "config.json").read_text())["culture"]
        assert info["model_id"] == k and info["accuracy"] == accuracy_of(k) and info["source_kind"] == "local"
        assert info["max_abs_logit_diff"] <= 1e-4
        assert "3 " in info["check"]
        hooked = load_converted(d)
        model, _ = load_mygpt(root / f"gpt_{k:03d}.pth")
        assert max_logit_diff(model, hooked, random_quizzes(2, seed=9)) <= 1e-4
    assert json.loads((out_dir / "gpt-1" / "config.json").read_text())["culture"]["dim_keys"] == 8
    assert not list(out_dir.rglob("*.tmp"))


def test_convert_defaults_to_every_model_and_bundled(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sources, "ZOO_DIR", make_zoo(tmp_path, TINY, n_models=2))
    out_dir = tmp_path / "o"
    code, out, err = run_cli(capsys, "convert", "--source", "bundled", "--out", str(out_dir), "--n-quizzes", "2")
    assert code == 0, err
    assert sorted(p.name for p in out_dir.iterdir()) == ["gpt-0", "gpt-1"]


def test_convert_from_offline_hub_cache(tmp_path, capsys, monkeypatch):
    root = make_local_source(tmp_path, TINY, n_models=1)
    use_hub_env(monkeypatch, make_offline_hub_cache(tmp_path, "owner/models", {"gpt_000.pth": root / "gpt_000.pth"}))
    code, _, err = run_cli(capsys, "convert", "--models", "0", "--source", "owner/models", "--out",
                           str(tmp_path / "o"), "--n-quizzes", "2")
    assert code == 0, err
    assert (tmp_path / "o" / "gpt-0" / "model.safetensors").is_file()


def test_convert_errors(tmp_path, capsys, monkeypatch):
    root = make_local_source(tmp_path, TINY, n_models=2)
    out = str(tmp_path / "o")
    msg = error_line(capsys, "convert", "--models", "0", "5", "--source", str(root), "--out", out)
    assert "model 5" in msg and "0, 1" in msg
    assert not (tmp_path / "o").exists()  # nothing converted before the id check
    assert "not found" in error_line(capsys, "convert", "--models", "0", "--source", str(tmp_path / "nowhere" / "x"),
                                 "--out", out)
    (root / "gpt_001.pth").write_bytes(b"corrupt")
    assert "gpt_001.pth" in error_line(capsys, "convert", "--models", "1", "--source", str(root), "--out", out)
    assert "device" in error_line(capsys, "convert", "--models", "0", "--source", str(root), "--out", out,
                              "--device", "nodevice")
    # offline and not cached
    use_hub_env(monkeypatch, make_offline_hub_cache(tmp_path, "owner/other", {"README.md": b"hi"}))
    msg = error_line(capsys, "convert", "--models", "0", "--source", "someone/missing", "--out", out)
    assert "--source bundled" in msg and "HF_HUB_OFFLINE" in msg
    # empty zoo
    monkeypatch.setattr(sources, "ZOO_DIR", tmp_path / "empty_zoo")
    assert "zoo is empty" in error_line(capsys, "convert", "--models", "0", "--source", "bundled", "--out", out)


def test_convert_help_does_not_import_heavy_modules():
    code = textwrap.dedent("""
        import sys, typer
        from culture_cli.commands import convert
        app = typer.Typer()
        convert.register(app)
        app.command("other")(lambda: None)
        try:
            app(["convert", "--help"])
        except SystemExit:
            pass
        heavy = [m for m in ("transformer_lens", "sae_lens", "huggingface_hub", "torch") if m in sys.modules]
        print("HEAVY", heavy)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--models" in res.stdout and "--out" in res.stdout
    assert "HEAVY []" in res.stdout, res.stdout
