"""Source of the tutorial notebooks: ``python docs/notebooks/make_notebooks.py [NAME...]`` writes
the .ipynb files (code and prose, no outputs); then
``python -m culture_cli.tools.run_notebooks`` executes them and stores the outputs.
Keeping the cells here makes notebook diffs reviewable."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOKS: dict[str, list] = {}


def notebook(name):
    def register(fn):
        NOTEBOOKS[name] = fn
        return fn
    return register


def md(text):
    return new_markdown_cell(text.strip("\n"))


def code(text):
    return new_code_cell(text.strip("\n"))


@notebook("01_quickstart")
def quickstart():
    return [
        md("""
# 01 — Quickstart: quizzes, models, TransformerLens, evaluation

Everything here runs offline on CPU on the **bundled zoo** (`source="bundled"`): small culture GPTs
shipped with the package. Every number below is printed by a cell of this notebook.
"""),
        code("""
import tempfile
import warnings
from pathlib import Path

import torch
from IPython.display import Image, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by TransformerLens

import culture
from culture import quiz as Q
from culture.world import generate_quizzes_with_tasks, TASKS
from culture.render import print_quizzes, save_quizzes_png, save_solutions_png

torch.manual_seed(0)
tasks = ["replace_color", "frame", "detect"]          # the zoo's world tasks
quizzes, task_ids = generate_quizzes_with_tasks(6, tasks=tasks, seed=0)
print(quizzes.shape, quizzes.dtype)                    # (n, 404): 4 blocks of marker + 10x10 cells
print([TASKS[int(t)] for t in task_ids])
pictures = Path(tempfile.mkdtemp())                    # PNGs go here; the notebook embeds them
"""),
        md("""
A quiz is four 10×10 grids A, f(A), B, f(B): the model must infer the rule from A → f(A) and apply it
to B. In text (plain, one character per cell) and as a picture:
"""),
        code("""
print_quizzes(quizzes[:1], tasks=[TASKS[int(task_ids[0])]], plain=True)
save_quizzes_png(quizzes[:3], pictures / "quizzes.png", tasks=[TASKS[int(t)] for t in task_ids[:3]])
display(Image(pictures / "quizzes.png"))
"""),
        md("""
## The models: MyGPT (checkpoint format) and a HookedTransformer

`load_culture` reads the reference checkpoints (`torch.load(weights_only=True)`); `load_hooked` converts
a model to TransformerLens. The hooked model takes BOS 0 + quiz[:-1] (`to_hooked_tokens`) and gives
the same logits as MyGPT on the quiz:
"""),
        code("""
from culture.hooked import load_hooked, max_logit_diff, to_hooked_tokens

models = culture.load_culture([0, 1, 2, 3], source="bundled")
model = models[0]
hooked = load_hooked(0, source="bundled")
print(f"{model.num_parameters:,} parameters; hooked: {hooked.cfg.n_layers} layers x {hooked.cfg.n_heads} heads")
print("max |logit difference| MyGPT vs HookedTransformer:", max_logit_diff(model, hooked, quizzes))
logits, cache = hooked.run_with_cache(to_hooked_tokens(quizzes))
print(cache["blocks.0.attn.hook_pattern"].shape, cache["blocks.2.hook_mlp_out"].shape)
"""),
        md("""
## Evaluation (the reference protocol)

A test set of world quizzes in the four deterministic structures with prompt noise, scored
teacher-forced: greedy accuracy (exactly the accuracy of greedy decoding) and expected sampled accuracy.
Small here (200 quizzes) to stay fast — read the ±: with n quizzes a share carries a 95% interval.
"""),
        code("""
from culture.evaluation import evaluate, source_test_set
from culture.intervals import wilson_interval

test_set = source_test_set("bundled", 200, tasks=tasks, seed=0, quizzes="world")
results = evaluate(models, test_set)
for r in results:
    k = round(r.greedy_accuracy * r.n_scored)
    lo, hi = wilson_interval(k, r.n_scored)
    print(f"model {r.name}: greedy {r.greedy_accuracy:.3f} [{lo:.3f}, {hi:.3f}]  "
          f"expected {r.expected_accuracy:.3f}  perplexity {r.perplexity:.4f}")
"""),
        md("""
## Generating an answer and looking at a wrong one

`culture.generate` fills the predicted block (greedy here, with a KV cache). We look for a quiz
model 0 gets wrong and draw target vs prediction (wrong cells crossed).
"""),
        code("""
from culture.evaluation import make_test_set

hard = make_test_set(100, tasks=tasks, seed=1)
solved = culture.generate(model, hard.quizzes, greedy=True)
answer = Q.ar_mask(hard.targets)                       # the predicted cells (the prompt may carry noise)
wrong = ((solved != hard.targets) & answer).any(1).nonzero().flatten()
print(f"{len(wrong)} of {len(hard)} answers wrong")
if len(wrong):
    i = int(wrong[0])
    cells = int(((solved[i] != hard.targets[i]) & answer[i]).sum())
    changed = int(Q.transform_mask(hard.targets[i:i+1]).sum())
    print(f"quiz {i} ({hard.labels[i]}): {cells} wrong cells; the rule changes {changed} cells of the answer")
    save_solutions_png(hard.quizzes[i:i+1], hard.targets[i:i+1], solved[i:i+1], pictures / "wrong.png",
                       tasks=[hard.labels[i]])
    display(Image(pictures / "wrong.png"))
"""),
    ]


@notebook("03_sae_features")
def sae_features():
    return [
        md("""
# 03 — SAE features: metrics, a task feature on the grids, steering

The bundled zoo ships a sparse autoencoder (SAELens format) on model 0's `blocks.2.hook_mlp_out`.
We load it, measure how much of the model it keeps, find a feature tied to one task, look at where
it fires on the grids, and ablate it to see what changes. Every number is printed by a cell.
"""),
        code("""
import warnings
warnings.filterwarnings("ignore", message="IProgress not found")
import torch
from IPython.display import display

from culture.evaluation import source_test_set
from culture.hooked import load_hooked
from culture.intervals import wilson_interval
from culture.sae import evaluate_sae, feature_report, load_sae, parse_steer, steer_accuracy

torch.manual_seed(0)
hooked = load_hooked(0, source="bundled", sae=True)
sae = load_sae("bundled", "gpt-0/blocks_2_mlp_out")
print(sae.cfg.d_in, "->", sae.cfg.d_sae, "features at", sae.cfg.metadata.hook_name)
test_set = source_test_set("bundled", 120, tasks=["replace_color", "frame", "detect"], seed=0, quizzes="world")
"""),
        md("""
## How much of the model does the SAE keep?

Variance explained and L0 (active features per token) on held-out quizzes; *loss recovered* compares the
loss on the predicted cells with the activation replaced by the SAE's reconstruction against the clean
run (1) and the zero-ablated run (0) — its floor. Most predicted cells are copies of the paired grid, so
it is also given on the *transform cells* alone (the cells the rule changes), with a bootstrap interval.
"""),
        code("""
res = evaluate_sae(hooked, sae, test_set)
for group in res.groups:
    g = res.by_group[group]
    t = g["transform_cells"]["loss_recovered"]
    print(f"{group:14s} var.expl. {g['explained_variance']:.3f}  L0 {g['l0']:.1f}  "
          f"loss recovered {g['loss_recovered']:.3f} (on transform cells {t['value']:.3f} "
          f"[{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}])  greedy clean/SAE/zero "
          f"{g['accuracy_clean']:.2f}/{g['accuracy_sae']:.2f}/{g['accuracy_zero']:.2f}")
"""),
        md("""
## A feature tied to a task

Among the 40 most active features, take the one whose firing is most concentrated on `frame` quizzes
(token frequency on frame over its mean frequency on the other tasks), and compare with a baseline:
the same ratio for the median feature.
"""),
        code("""
rep = feature_report(hooked, sae, test_set, top=40, n_examples=4)
def concentration(f, task="frame"):
    freq = {k: v["token_frequency"] or 0.0 for k, v in f["by_task"].items()}
    others = [v for k, v in freq.items() if k != task]
    return freq[task] / max(sum(others) / len(others), 1e-6)
ranked = sorted(rep.features, key=concentration, reverse=True)
best = ranked[0]
median = ranked[len(ranked) // 2]
print(f"feature {best['id']}: frame concentration {concentration(best):.2f} "
      f"(median feature {median['id']}: {concentration(median):.2f})")
print("token frequency per task:", {k: round(v["token_frequency"], 4) for k, v in best["by_task"].items()})
print("promotes:", best.get("promotes"), " suppresses:", best.get("suppresses"))
display(rep.image(best["id"]))
"""),
        md("""
## Steering: ablate the feature

The SAE is spliced in with its error term, so without an edit the model is unchanged; then the
feature is scaled by 0. Greedy accuracy per task, clean vs ablated, with 95% Wilson intervals.
"""),
        code("""
steer = steer_accuracy(hooked, sae, test_set, parse_steer([f"{best['id']}=0"], sae.cfg.d_sae))
for group, g in steer["by_group"].items():
    n = g["n"]
    for what in ("accuracy_clean", "accuracy_steered"):
        lo, hi = wilson_interval(round(g[what] * n), n)
        print(f"{group:14s} {what:17s} {g[what]:.3f} [{lo:.3f}, {hi:.3f}]")
    print(f"{group:14s} quizzes whose greedy correctness changed: {g['changed']} of {n}")
"""),
    ]


def build(name: str) -> Path:
    nb = new_notebook(cells=NOTEBOOKS[name]())
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = HERE / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


if __name__ == "__main__":
    for name in sys.argv[1:] or NOTEBOOKS:
        print(build(name))
