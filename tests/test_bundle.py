import json

import pytest
import torch

from culture.bundle import _greedy_table, _structure_order, pack_zoo
from culture.mygpt import load_mygpt
from culture.sources import resolve_source
from culture.training import CultureRun, TrainConfig
from culture_cli.main import main


def test_pack_zoo_writes_fp16_reference_checkpoints_and_card(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = TrainConfig(nb_models=2, model="17K", tasks=("frame", "replace_color"), train_samples=25,
                      test_samples=10, culture=False, eval_batch_size=10)
    run = CultureRun.create(run_dir, cfg, command="culture-interp train --out run")
    run.train(max_rounds=2)
    dest = tmp_path / "zoo"
    (dest / "sae" / "gpt-0").mkdir(parents=True)  # an SAE of earlier weights: packing removes it
    info = pack_zoo(run_dir, dest, num_samples=20)
    assert not (dest / "sae").exists()
    for k in range(2):
        state, acc = torch.load(dest / f"gpt_{k:03d}.pth", weights_only=True)
        assert all(v.dtype == torch.float16 for v in state.values())
        model, _ = load_mygpt(dest / f"gpt_{k:03d}.pth")
        assert model.token_embedding.weight.dtype == torch.float32
    card = (dest / "MODEL_CARD.md").read_text()
    assert "culture-interp train --out run" in card and "frame" in card
    assert "Greedy accuracy per structure" in card and "| 1 (A, f_A, B, f_B) |" in card
    assert json.loads((dest / "zoo.json").read_text())["run_config"]["tasks"] == ["frame", "replace_color"]
    assert len(info["evaluation"]["results"]["models"]) == 2

    # a packed zoo is a source whose default tasks are its training tasks
    assert resolve_source(dest).default_tasks() == ["frame", "replace_color"]
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--models", "0", "1", "--source", str(dest), "--num-samples", "12", "--json",
              str(tmp_path / "r.json")])
    assert exit_info.value.code in (0, None)
    result = json.loads((tmp_path / "r.json").read_text())
    tasks = set(result["models"][0]["by_task"])
    assert tasks <= {"frame", "replace_color"}

    # SAEs trained into the zoo afterwards: the card gains their held-out figures and commands
    _refresh_card_with_saes(dest)


def _refresh_card_with_saes(dest):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from culture.bundle import refresh_card, sae_train_command

    assert "## SAEs" not in (dest / "MODEL_CARD.md").read_text() and "Zoo size" in (dest / "MODEL_CARD.md").read_text()
    summary = {"hook_name": "blocks.1.hook_mlp_out",
               "settings": {"steps": 2000, "expansion_factor": 16, "l1_coefficient": 2.5, "lr": 0.001,
                            "n_batches_for_norm_estimate": 100, "seed": 43}}
    for folder, model in (("gpt-1", 1), ("gpt-0-seed43", 0)):
        out = dest / "sae" / folder / "blocks_1_mlp_out"
        sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=64, metadata=SAEMetadata(hook_name="blocks.1.hook_mlp_out")))
        sae.save_model(out)
        (out / "training_summary.json").write_text(json.dumps({**summary, "model_id": model}))
    info = refresh_card(dest, num_samples=4)
    assert [e["folder"] for e in info["saes"]] == ["sae/gpt-1/blocks_1_mlp_out", "sae/gpt-0-seed43/blocks_1_mlp_out"]
    assert all(0 <= e["heldout"]["dead_features"] <= 64 and e["heldout"]["l0"] >= 0 for e in info["saes"])
    card = (dest / "MODEL_CARD.md").read_text()
    assert "## SAEs" in card and "| `sae/gpt-0-seed43/blocks_1_mlp_out` | 0 | 43 |" in card and "MiB in" in card
    assert ("culture-interp sae train --model 1 --source bundled --hook-name blocks.1.hook_mlp_out --out "
            "culture/zoo/sae/gpt-1/blocks_1_mlp_out --steps 2000 --expansion-factor 16 --l1-coefficient 2.5 --lr "
            "0.001 --n-batches-for-norm-estimate 100 --seed 43") in card
    assert json.loads((dest / "zoo.json").read_text())["saes"][0]["model"] == 1
    assert sae_train_command(summary, "OUT").endswith("--seed 43")


def test_a_zoo_trained_in_two_stages_records_both(tmp_path):
    cfg = TrainConfig(nb_models=2, model="17K", tasks=("frame",), train_samples=20, test_samples=10,
                      culture=False, eval_batch_size=10)
    first = CultureRun.create(tmp_path / "run1", cfg, command="culture-interp train --out run1")
    first.train(max_rounds=2)
    pack_zoo(tmp_path / "run1", tmp_path / "zoo", num_samples=10)
    second = CultureRun.create(tmp_path / "run2", cfg, command="culture-interp train --out run2 --init-from zoo",
                               init_from=str(tmp_path / "zoo"))
    assert second.epochs == [1, 1]
    second.train(max_rounds=1)
    info = pack_zoo(tmp_path / "run2", tmp_path / "zoo", num_samples=10)
    assert [st["command"] for st in info["stages"]] == ["culture-interp train --out run1",
                                                       "culture-interp train --out run2 --init-from zoo"]
    assert info["rounds"] == 3 and sorted(info["epochs"]) == [1, 2]
    assert info["training_seconds"] == pytest.approx(first.seconds + second.seconds)
    card = (tmp_path / "zoo" / "MODEL_CARD.md").read_text()
    assert "# stage 1" in card and "# stage 2" in card and "--init-from zoo" in card


def test_structure_table_orders_numbers_and_puts_unknown_structures_last():
    rows = [{"by_structure": {"other": {"greedy_accuracy": 0.5, "markers": "other"},
                              "10": {"greedy_accuracy": 0.25}, "2": {"greedy_accuracy": 1.0, "markers": "(B)"}}}]
    lines = _greedy_table(rows, "by_structure", "t", lambda keys: sorted(keys, key=_structure_order))
    assert lines[3] == "| model | 2 (B) | 10 | other |"
    assert lines[5] == "| 0 | 1.000 | 0.250 | 0.500 |"


def test_card_names_the_last_stage_options():
    from culture.bundle import _last_options

    assert _last_options({"ema_decay": None, "train_structures": None}) == ""
    text = _last_options({"ema_decay": 0.999, "train_structures": [1, 2]})
    assert "EMA, decay 0.999" in text and "shipped weights are the average" in text
    assert text.endswith("structures 1, 2")


def test_pack_zoo_ships_c_quizzes_sidecar_and_culture_costs(tmp_path, monkeypatch):
    from culture import training
    from culture.quizfile import load_c_quizzes
    from tests.test_training import _fake_probabilities

    monkeypatch.setattr(training, "solve_probabilities", lambda models, q, **kw: _fake_probabilities(q, len(models)))
    run_dir = tmp_path / "run"
    cfg = TrainConfig(nb_models=3, model="17K", tasks=("frame",), train_samples=25, test_samples=10, culture=True,
                      threshold=0.0, culture_batch=40, culture_max_batches=2, c_quizzes_train=3, c_quizzes_test=2,
                      max_fail=1, eval_batch_size=10)
    run = CultureRun.create(run_dir, cfg)
    run.step()  # accuracies 0 >= threshold 0: a culture phase
    dest = tmp_path / "zoo"
    info = pack_zoo(run_dir, dest, num_samples=12, note="Threshold forced to 0 for the test.")
    train, test = load_c_quizzes(dest / "c_quizzes.pth")
    sidecar = json.loads((dest / "c_quizzes_info.json").read_text())
    assert len(sidecar["train"]) == len(train) and len(sidecar["test"]) == len(test) and len(train) > 0
    assert info["culture_phases"][0]["kept"] == len(train) + len(test)
    card = (dest / "MODEL_CARD.md").read_text()
    assert "## Culture phases" in card and "Threshold forced to 0 for the test." in card
    assert f"| 1 | 0 | {info['culture_phases'][0]['batches']} | {info['culture_phases'][0]['generated']} |" in card
    assert "--no-c-quizzes" in card  # the headline accuracy is on world quizzes only
    if len(test):
        assert "culture greedy" in card
