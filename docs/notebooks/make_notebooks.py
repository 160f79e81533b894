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


@notebook("02_circuits")
def circuits():
    return [
        md("""
# 02 — Circuits: ablations, attention, patching, logit lens, circuit discovery

Which components of a zoo model carry each task's rule? Model 0 of the **bundled zoo**
(`source="bundled"`), its three tasks, every method beside its baseline: the clean model for ablations,
control pairs for patching, a random-init model for the logit lens, random circuits for circuit discovery.

Sizes are **small for speed** (a few dozen quizzes and pairs, one task for circuit discovery), so the
intervals are wide; the `culture-interp ablate`, `patch`, `logit-lens`, `circuit find` and `circuit compare`
commands (documentation: guide *Circuits*, `docs/guides/circuits.md`) give the full-size figures, and the
results page *Circuits of the bundled models* (`docs/results/circuits.md`) shows them. Every number is printed
by a cell.
"""),
        code("""
import tempfile
import warnings
from pathlib import Path

import torch
from IPython.display import Image, display

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by TransformerLens

from culture.ablation import attention_statistics, run_ablations, source_test_set
from culture.hooked import load_hooked
from culture.intervals import format_interval

def ci(x, percent=True, digits=1):
    \"\"\"A {"value", "ci95"} dict of the library as "value [low, high]".\"\"\"
    return format_interval(x["value"], *x["ci95"], percent=percent, digits=digits)

torch.manual_seed(0)
TASKS = {"replace_color": "dst", "frame": "color", "detect": "marker"}  # task -> the factor its pairs vary
hooked = load_hooked(0, source="bundled")
test_set = source_test_set("bundled", 36, list(TASKS), seed=0, quizzes="world")
print(f"model 0: {hooked.cfg.n_layers} layers x {hooked.cfg.n_heads} heads; {len(test_set)} test quizzes")
pictures = Path(tempfile.mkdtemp())
"""),
        md("""
## Ablations

Each attention and MLP layer's output *resampled*: replaced by its activation on another test quiz of the
same structure and task (a realistic value without this quiz's information; `culture-interp ablate
--resample --mean` adds zero and mean ablation). The baseline is the clean model on the same quizzes;
the change is a paired interval. We read whole-grid accuracy on the *transform cells* (the cells the rule
changes — copying the paired grid gets them all wrong), per task.
"""),
        code("""
abl = run_ablations(hooked, test_set, modes=("resample",), seed=0)
def points(x):
    return f"{100 * x['value']:+.0f} [{100 * x['ci95'][0]:+.0f}, {100 * x['ci95'][1]:+.0f}]"
print("component  " + "  ".join(f"{t:>26s}" for t in TASKS) + "   (transform-cell grid accuracy; change in points)")
print("clean      " + "  ".join(f"{ci(abl.clean[t]['transform_cells']['grid_accuracy'], digits=0):>26s}" for t in TASKS))
for r in abl.rows:
    cells = [r["metrics"][t]["transform_cells"] for t in TASKS]
    print(f"{r['component']:10s} " + "  ".join(
        f"{ci(c['grid_accuracy'], digits=0) + ' ' + points(c['change']['grid_accuracy']):>26s}" for c in cells))
worst = min(abl.rows, key=lambda r: r["metrics"]["all"]["transform_cells"]["change"]["grid_accuracy"]["value"])
least = max(abl.rows, key=lambda r: r["metrics"]["all"]["transform_cells"]["change"]["grid_accuracy"]["value"])
for what, r in (("largest", worst), ("smallest", least)):
    print(f"{what} drop over all quizzes: {r['component']}, "
          f"{points(r['metrics']['all']['transform_cells']['change']['grid_accuracy'])} points")
"""),
        md("""
## Attention of one head: 0.0

Where does head 0.0 look? Its attention mass from the queries that predict the answer cells, by key grid
relative to the query's grid (mean over the test quizzes, 95% interval), beside the same head of a
randomly initialised model of the same shape (in brackets); then the look-back offsets with the most mass.
`culture-interp ablate --model 0 --attention 0.0 --png head.png` draws the mean pattern per structure.
"""),
        code("""
from culture.circuits.logit_lens import random_model_like

stats = attention_statistics(hooked, test_set, 0, 0)
random_stats = attention_statistics(random_model_like(hooked, seed=0), test_set, 0, 0)
for group in ("answer: transform cells", "answer: copy cells"):
    print(f"queries of the {group}:")
    for key, v in stats.by_block[group].items():
        print(f"   {key:24s} {ci(v):22s} (random-init {100 * random_stats.by_block[group][key]['value']:.1f}%)")
for o in stats.offsets[:3]:
    print(f"offset {o['offset']:3d} ({o['reads']}): mean weight {ci(o['mass'])}, "
          f"the maximum for {ci(o['argmax_share'], digits=0)} of the answer queries")
"""),
        md("""
## Counterfactual pairs

A pair is a clean and a corrupted quiz sharing B, whose example pair (A, f(A)) differs in one factor of
the task (`pair_factors`), so f(B) differs. Control pairs (factor `example`) draw a new example with the
same parameters: their answers coincide, so anything a patch does on them is not about the factor.
"""),
        code("""
from culture.circuits import control_pairs, make_pairs, pair_factors, run_patching
from culture.quiz import ar_mask
from culture.render import save_quizzes_png

pairs = {t: make_pairs(12, t, vary, seed=0) for t, vary in TASKS.items()}
controls = {t: control_pairs(6, t, seed=0) for t in TASKS}
for t, vary in TASKS.items():
    p, c = pairs[t], controls[t]
    differ = ((p.clean != p.corrupted) & ar_mask(p.clean)).sum(1).float()
    same = bool(((c.clean == c.corrupted) | ~ar_mask(c.clean)).all())
    print(f"{t}: factors {pair_factors(t)}; varying {vary!r}: the answers differ in {differ.mean():.1f} cells "
          f"on average; control answers identical: {same}")
p, c = pairs["replace_color"], controls["replace_color"]
save_quizzes_png(torch.stack([p.clean[0], p.corrupted[0], c.clean[0], c.corrupted[0]]), pictures / "pair.png",
                 labels=["clean", "corrupted (dst varied)", "control: clean", "control: new example"])
display(Image(pictures / "pair.png"))
"""),
        md("""
## Activation and attribution patching of heads

Denoising: run the corrupted quiz and restore one head's clean output. *Recovery* of the logit
difference (clean vs corrupted answer over the cells where they differ): 0 = corrupted run, 1 = clean
run, bootstrap interval over pairs. Beside it the same patch between control pairs (margin change in
units of the real gap; near 0 means the head moves the answer only when the factor changes), and
attribution patching (one backward pass, a first-order estimate) with its agreement to activation
patching.
"""),
        code("""
from culture.circuits.plots import save_patch_png

def rec(method):
    return format_interval(method["recovery"], *method["ci95"], percent=False, digits=2)

reports = {}
for t in TASKS:
    rep = reports[t] = run_patching(hooked, pairs[t], what="heads", method="both", control=controls[t])
    b = rep.baseline.to_dict()
    print(f"{t}: clean run gives the clean answer on {ci(b['clean_accuracy'], digits=0)} of the pairs, "
          f"the corrupted run on {ci(b['corrupted_gives_clean_answer'], digits=0)}")
    rows = rep.site_rows()
    for i in rep.ranking()[:3]:
        act, att = rows[i]["activation"], rows[i]["attribution"]
        print(f"   {rows[i]['site']:8s} activation {rec(act):20s} control {ci(act['control'], False, 2):24s} "
              f"attribution {rec(att)}")
    a = rep.agreement()
    print(f"   attribution vs activation over {a['n_sites']} heads: Pearson r {a['pearson_r']:.2f}, "
          f"Spearman rho {a['spearman_rho']:.2f}, same top head: {a['same_top_site']}")
save_patch_png(reports["replace_color"], pictures / "patch.png", title="model 0, replace_color (dst)")
display(Image(pictures / "patch.png"))
"""),
        md("""
## Logit lens

The residual stream before each block (and after the last) decoded with the unembedding — exact at the
last layer, since these GPTs have no final LayerNorm. Accuracy on the transform cells per task, the
random-init model of the same shape in brackets; then the components with the largest direct effect
on the correct colour's logit (direct logit attribution, transform cells).
"""),
        code("""
from culture.circuits.logit_lens import logit_lens
from culture.circuits.plots import save_logit_lens_png

lens = logit_lens(hooked, test_set, baseline=True, seed=0)
for L, name in enumerate(lens.layer_labels):
    cells = [f"{g} {ci(lens.accuracy[g][L]['transform_accuracy'], digits=0)} "
             f"({100 * lens.baseline[g][L]['transform_accuracy']['value']:.0f}%)" for g in TASKS]
    print(f"{name:14s}", " | ".join(cells))
print("copy the paired grid: all predicted cells "
      f"{100 * lens.copy_baseline['all']['cell_accuracy']:.1f}%, transform cells 0%")
print("direct logit attribution (transform cells):",
      ", ".join(f"{c} {lens.dla['all'][c]['transform']:+.2f}" for c in lens.dla_ranking()[:4]))
save_logit_lens_png(lens, pictures / "lens.png", title="logit lens, model 0 (dashed: random-init model)")
display(Image(pictures / "lens.png", width=800))
"""),
        md("""
## Circuit discovery (replace_color)

Edge attribution patching with integrated gradients (one interpolation step here, for speed) ranks the
edges between nodes (embed, heads, MLPs, readout); a circuit of the top k edges is run with every other
edge patched from the corrupted run. Faithfulness = recovery of the logit difference (full graph 1,
empty 0), beside random circuits at the sizes of the grid; a bisection between the grid's sizes finds the
smallest size reaching 80%.
The other tasks: `culture-interp circuit --task frame --vary color` and `--task detect --vary marker`.
"""),
        code("""
from culture.circuits.discovery import discover_circuit
from culture.circuits.plots import save_circuit_png

circ = discover_circuit(hooked, pairs["replace_color"], threshold=0.8, sizes=[10, 30, 90], random_circuits=1,
                        random_sizes=3, ig_steps=1, seed=0)
n_edges = len(circ.edges)
size = circ.chosen_size or max(p["size"] for p in circ.curve)
print(("smallest circuit reaching 80%" if circ.chosen_size else "no evaluated size reaches 80%; largest") +
      f": {size} of {n_edges} edges, faithfulness {ci(circ.chosen_faithfulness())}")
randoms = {p["size"]: p["faithfulness"] for p in circ.random_curve}
for p in circ.curve:
    beside = f"   random edges: {ci(randoms[p['size']])}" if p["size"] in randoms else ""
    print(f"   {p['size']:3d} top edges: {ci(p['faithfulness']):22s}{beside}")
print("top edges:", ", ".join(f"{e['src']} -> {e['dst']}" for e in circ.edge_rows(4)))
save_circuit_png(circ, pictures / "circuit.png", title=f"model 0, replace_color (dst), {len(pairs['replace_color'])} pairs")
display(Image(pictures / "circuit.png", width=900))
"""),
        md("""
## Across models: do they share the circuit?

Heads are unordered, so "head 3.3" of model 0 need not be head 3.3 of model 1. Every model of the zoo runs
the same pairs; each head gets a *role* (its patching recovery over the task's factors, its attention by
offset, its direct effect on the logits per target colour), and heads are matched within each layer by role
similarity — against a null of shuffled role vectors. Model j's circuit (its top edges) is then carried to
model k through the matching and patched in k alone: *cross-model faithfulness*, with intervals that
resample the pairs *and* redo the matching, beside circuits carried by random head permutations. Last,
the bundled SAEs: do features matched across models (activation correlation) both sit among their model's
top features by effect on the answer? Sizes here are tiny (3 pairs per profile condition: the matching is
noisy); `culture-interp circuit compare` gives the zoo run (results page *Circuits of the bundled models*,
`docs/results/circuits.md`, section *Do the four models share these circuits?*).
"""),
        code("""
from culture.circuits.compare import compare_circuits
from culture.sae import bundled_sae_folder, load_sae

zoo = load_hooked([0, 1, 2, 3], source="bundled")
saes = [load_sae("bundled", bundled_sae_folder(k)) for k in range(4)]
cmp = compare_circuits(zoo, "replace_color", "dst", profile_tasks=list(TASKS), n_pairs=8, profile_pairs=3,
                       circuit_edges=30, ig_steps=1,
                       n_resamples=300, match_resamples=2, null_draws=30, null_circuits=2, saes=saes,
                       top_k_features=10, feature_quizzes=6, batch_size=8, seed=0)
layer, head = cmp.reference
print(f"reference: head {layer}.{head} of model 0 (its highest recovery)")
for r in cmp.reference_rows()[1:]:
    print(f"model {r['model']}: plays its role: head {r['matched']} (similarity {r['similarity']:.2f}, "
          f"null q95 {r['null_q95']:.2f}; best anywhere {r['best_anywhere']}); its recovery "
          f"{ci(r['matched_recovery'], False, 2)}; the model's own top head {r['top_head']}")
for (a, b), m in cmp.matchings.items():
    if a == 0:
        n = m.null_summary()
        print(f"matching 0 -> {b}: mean similarity {m.mean_similarity:.2f} (shuffled null {n['null_mean']:.2f}, "
              f"q95 {n['null_q95']:.2f}, p {n['p_value']:.2f})")
print("cross-model faithfulness (row: circuit of model j; column: patched in model k) [null: random matching]")
for j in range(4):
    print(f"  {j}: " + " | ".join(ci(cmp.faithfulness[j][k], digits=0) +
                                  ("" if j == k else f" [{100 * cmp.null_faithfulness[j][k]['mean']:.0f}%]")
                                  for k in range(4)))
for key, sh in cmp.features["shared"].items():
    if key.startswith("0->"):
        print(f"SAE features {key}: {ci(sh, digits=0)} of model 0's top 10 with a partner have it in the other "
              f"model's top 10 (shuffled-match null {100 * sh['null_mean']:.1f}%)")
"""),
        md("""
## Reading these results

A component matters for the rule when patching it recovers much of the logit difference **and** its
control effect is near zero; a large control effect means it carries the example grids themselves rather
than the factor. Attribution patching is a cheap first-order estimate: compare it with activation
patching head by head before trusting it (the rows above show where the two part). The logit lens shows at which
layer the answer becomes readable; the circuit is only as good as its faithfulness against random
circuits. None of this shows *how* a head computes the rule, only where its effect goes; at these sizes
the intervals, not the point values, say what holds. Across models, a match means a head plays a similar
role, not that it computes the same way; read cross-model faithfulness against the model's own and the
random-matching null.
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


@notebook("04_universality")
def universality():
    return [
        md("""
# 04 — Universality: neurons, CKA and SAE features across the zoo's models

The bundled zoo's models 0–3 were trained side by side on the same tasks. Do they learn the same units?
`compare_models` streams the same quizzes through every model and measures, each beside its baselines:
MLP neurons (Gurnee et al. 2024: a neuron's best correlation with another model, minus the same against a
randomly rotated copy of that model), residual-stream CKA (permutation test, random-init models), and SAE
features (matched between models, between a shuffled-quiz floor and a ceiling: model 0's second SAE,
trained with another seed). Last, attention heads: matched across models by the role they play, against
shuffled roles.

The token budget is **small for speed** (a few thousand tokens, one confound control besides the raw
activations, few bootstrap resamples), so read the intervals; the full figures come from
`culture-interp universality compare --models 0 1 2 3 --source bundled --tokens 40000 --sae bundled
--ceiling-sae bundled` (documentation: guide *Universality*, `docs/guides/universality.md`). Every number is
printed by a cell.
"""),
        code("""
import warnings
warnings.filterwarnings("ignore", message="IProgress not found")
import torch
from IPython.display import display

import culture
from culture.sae import bundled_sae_folder, load_sae
from culture.universality import compare_models

def pct(x, ci=None):
    \"\"\"A share, with its 95% interval when there is one: "12.3% [10.1, 14.0]".\"\"\"
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" + ("" if ci is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]")

ids = [0, 1, 2, 3]
models = culture.load_culture(ids, source="bundled")
saes = [load_sae("bundled", bundled_sae_folder(k)) for k in ids]
ceiling = load_sae("bundled", bundled_sae_folder(0, extra=True))   # model 0, another seed
print("SAEs:", [s.culture_path.split("/sae/")[-1] for s in saes], "ceiling:", ceiling.culture_path.split("/sae/")[-1])
report = compare_models(models, n_tokens=32 * 404, tasks=["replace_color", "frame", "detect"],
                        controls=("none", "position"), cka_permutations=19, n_resamples=200,
                        saes=saes, ceiling_sae=ceiling, names=[str(k) for k in ids], seed=0,
                        compute_dtype=torch.float32)
print(f"{report.settings['tokens']:,} tokens ({report.settings['quizzes']} quizzes), models {report.names}, "
      f"threshold {report.threshold:g}")
"""),
        md("""
## Neurons

Per MLP layer: the mean *max-corr* (a neuron's best Pearson correlation with any neuron of another
model), the same against the rotation baseline, their difference (*excess*), and the share of neurons
whose excess passes the threshold — *universal* — with its interval; then the same share when partners
are chosen on one half of the quizzes and measured on the other (*held-out*), and among random-init models
of the same shapes (the null). Raw activations first (Gurnee's protocol), then with each unit's mean per
position removed (what the position alone gives every model).
"""),
        code("""
for control in report.controls:
    print(f"control {control}:")
    print("layer  max-corr  rotation  excess   universal            held-out             random-init models")
    rows = report.summary_rows(control)
    for r in rows:
        print(f"{r['layer']:5}  {r['mean_max_corr']:8.3f}  {r['mean_baseline']:8.3f}  {r['mean_excess']:6.3f}   "
              f"{pct(r['share_universal'], r['share_universal_ci']):20s} "
              f"{pct(r['held_share_universal'], r['held_share_universal_ci']):20s} "
              f"{pct(r['random_share_universal'], r['random_share_universal_ci'])}")
    above = sum(r["share_universal_ci"][0] > r["random_share_universal_ci"][1] for r in rows)
    print(f"   layers where trained models have more universal neurons than random-init ones (intervals apart): "
          f"{above} of {len(rows)}")
top = report.universal_neurons("none")[:3]
for e in top:
    print(f"model {e['model']} neuron {e['layer']}.{e['neuron']}: excess {e['excess']:.2f}, matches "
          + ", ".join(f"{m}:{v['layer']}.{v['neuron']} (r {v['corr']:.2f})" for m, v in e["matches"].items()))
"""),
        md("""
## Residual-stream CKA

Linear and debiased CKA between the models' residual streams at the same depth (mean over the model
pairs), beside random-init models, under each control; under the first, debiased CKA too, and *p*, the
largest over pairs of a permutation test (one model's tokens shuffled; with 19 shuffles it cannot go
below 1/20).
"""),
        code("""
for control in report.controls:
    print(f"control {control}:")
    rows = report.cka_diagonal_rows(control)
    for r in rows:
        line = f"   {r['layer']:6s} linear {r['mean']:.3f} (random-init {r['baseline_mean']:.3f})"
        if r.get("debiased_mean") is not None:  # debiased CKA and the test: under the first control
            line += (f"   debiased {r['debiased_mean']:.3f} (random-init {r['baseline_debiased_mean']:.3f})"
                     f"   p {r['max_p_linear']:.2f}")
        print(line)
    more = [r["layer"] for r in rows if r["mean"] > r["baseline_mean"]]
    print(f"   layers where trained models are more alike than random-init ones: {more or 'none'}")
"""),
        md("""
## SAE features

Each model's SAE on `blocks.2.hook_mlp_out`. Features matched one to one (Hungarian assignment on
activation correlations) and many to one (each feature's best partner); the share above the threshold
beside its **floor** (the other SAE's features taken on other quizzes at the same positions) and, for the
pair of model 0's two SAEs, the **ceiling** (the same model, another seed). SVCCA of the matched decoder
directions beside random pairings.
"""),
        code("""
rows = report.sae_rows()
print(f"{'pair':16s} {'kind':34s} {'1-to-1 > thr':22s} {'floor':7s} {'many-to-1 > thr':22s} {'floor':7s} SVCCA / floor")
for r in rows:
    print(f"{r['pair']:16s} {r['kind']:34s} {pct(r['share_above'], r['share_above_ci']):22s} "
          f"{pct(r['null_share_above']):7s} {pct(r['share_max_above_a'], r['share_max_above_a_ci']):22s} "
          f"{pct(r['null_share_max_above_a']):7s} {r['svcca']:.3f} / {r['svcca_floor']:.3f}")
across = [r["share_above"] for r in rows if r["kind"] == "across models"]
ceil = [r["share_above"] for r in rows if r["kind"] != "across models"]
floor = [r["null_share_above"] for r in rows if r["kind"] == "across models"]
print(f"one to one above the threshold: across models {pct(min(across))}-{pct(max(across))}, "
      f"floor at most {pct(max(floor))}, ceiling (model 0, two seeds) {pct(ceil[0]) if ceil else '-'}")
"""),
        md("""
## A feature family on the grids, in every model

A *family*: a feature of model 0's SAE whose one-to-one partner passes the threshold in every other
model's SAE; *consistent* when every pair of its members also match each other. The count is beside the
same count on shuffled quizzes (the floor). The strongest family can be a feature that fires on very few
tokens, so we draw the strongest consistent one: its member in each model, on the same quizzes (where
model 0's member fires most); dots mark where each model's feature fires, on the cell read there.
"""),
        code("""
import io
from IPython.display import Image
from culture.dashboard import family_images

sae = report.sae
print(f"{len(sae.families)} families (floor: {sae.null_families} on shuffled quizzes); "
      f"{sum(f.consistent for f in sae.families)} consistent in every pair of models")
fams = report.family_rows(12)                       # strongest first (weakest correlation with the anchor)
def describe(fam):
    rates = sorted(fam["rates"].items(), key=lambda kv: -kv[1]["value"])[:3]
    return (", ".join(f"model {m}: feature {v}" for m, v in fam["members"].items())
            + f"; weakest correlation {fam['min_corr']:.2f}; fires most on "
            + ", ".join(f"{k} {pct(v['value'], v['ci95'])}" for k, v in rates))
if fams:
    print("strongest family:", describe(fams[0]))
    fam = next((f for f in fams if f["consistent"]), fams[0])
    print("drawn below, the strongest consistent in every pair:" if fam["consistent"] else "drawn below:",
          describe(fam))
    images = family_images(report, max_families=fams.index(fam) + 1, quizzes=2).get(fam["family"], {})
    for model, img in images.items():
        print(f"model {model}, feature {fam['members'][model]}:")
        png = io.BytesIO()
        img.save(png, format="PNG")
        display(Image(png.getvalue()))
"""),
        md("""
## Heads: the same role in every model?

Heads of a layer are unordered, so "head 3.3" of model 0 need not be head 3.3 of model 1. Each head gets a
*role* (`culture.circuits.head_roles`): its activation-patching recovery on counterfactual pairs of every
factor of the three tasks, its attention by offset, and its direct effect on the logits per target colour —
positions and vocabulary are shared by every model, residual bases are not. Heads are matched one to one
within each layer by role similarity (`culture.circuits.matching`), against matchings of shuffled role
vectors (the null). The pairs and seeds are those of `culture-interp circuit compare` with
`--profile-pairs 6`, so this matching is the one of the zoo run on the results page *Circuits of the bundled
models* (`docs/results/circuits.md`), which also carries each model's circuit to the others through it
(cross-model faithfulness) and compares SAE features on the circuits; notebook 02 ends with a small version.
"""),
        code("""
from culture import load_hooked
from culture.circuits.head_roles import head_role_data, role_conditions
from culture.circuits.matching import match_heads
from culture.circuits.pairs import make_pairs

hooked = load_hooked(ids, source="bundled")
conditions = role_conditions(["replace_color", "frame", "detect"])   # every (task, factor) that changes f(B)
pair_sets = {f"{t}/{f}": make_pairs(6, t, f, seed=1 + i) for i, (t, f) in enumerate(conditions)}  # same for all
roles = [head_role_data(h, pair_sets, batch_size=16).vectors() for h in hooked]
L, H = hooked[0].cfg.n_layers, hooked[0].cfg.n_heads
ref = divmod(int(roles[0]["profile"][:, 0].argmax()), H)            # model 0's top head on the first condition
print(f"{len(conditions)} conditions x 6 pairs; model 0's top head on {'/'.join(conditions[0])}: {ref[0]}.{ref[1]}")
for b in ids[1:]:
    m = match_heads(roles[0], roles[b], L, H, null_draws=100, seed=b)
    c, n = m.counterpart(*ref), m.null_summary()
    print(f"model {b}: head {c['matched']} plays its role (similarity {c['similarity']:.2f}, null q95 "
          f"{c['null_q95']:.2f}; most similar anywhere {c['best_anywhere']}); all heads: mean matched similarity "
          f"{n['observed']:.2f} vs shuffled {n['null_mean']:.2f} (q95 {n['null_q95']:.2f}, p {n['p_value']:.2f})")
"""),
        md("""
## Reading these results

A unit is shared only as far as it beats its null: neurons against the rotation baseline and random-init
models, CKA against random-init models (a shared positional code makes even untrained models alike, which
the position control removes), SAE matches between the shuffled-quiz floor and the second-seed ceiling —
a cross-model match rate near the ceiling means the models share features about as much as one model's
two SAEs do. A family drawn on the grids shows where its members fire, not what they compute. Matched heads
play a similar role (patching profile, attention pattern, logit output), which is not proof that they compute
the same way; with 100 shuffled draws, p cannot go below 0.01. With this
small budget the intervals are wide; `--dashboard DIR` on the full command writes every family's page.
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
