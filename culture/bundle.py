"""Packing a training run into the bundled model zoo (``--source bundled``).

``pack_zoo(run_dir)`` copies a run's checkpoints into ``culture/zoo/`` as fp16
reference-format files (``gpt_{k:03d}.pth``), copies ``c_quizzes.pth`` when the
culture phase produced any, evaluates the packed models with the reference
protocol (culture.evaluation) and writes ``MODEL_CARD.md`` and ``zoo.json``:
the exact command, seeds, tasks, sizes, accuracies and training time.

``refresh_card(dest)`` evaluates the SAEs trained into ``dest/sae`` afterwards
(``gpt-K/<hook>/``, ``gpt-K-seedS/<hook>/``) on held-out quizzes and adds
their section (held-out variance explained, L0, dead features, the training
commands) and the zoo's size to the card.
"""

from __future__ import annotations

import json
from pathlib import Path


from culture.errors import CultureError, first_sentence
from culture.io import atomic_dir, atomic_write_json, atomic_write_text, load_tensors
from culture.mygpt import load_mygpt, save_checkpoint
from culture.quiz import STRUCTURES
from culture.quizfile import load_c_quizzes, save_c_quizzes
from culture.sources import ZOO_DIR

#: the greedy accuracy every bundled model should reach (issue #4)
TARGET_GREEDY_ACCURACY = 0.9


def pack_zoo(run_dir, dest=ZOO_DIR, *, models=None, num_samples: int = 500, seed: int = 0,
             progress=None, note: str | None = None) -> dict:
    """Pack ``run_dir`` (a ``culture-interp train`` result) into ``dest``,
    which is replaced whole (atomically): fp16 checkpoints, c_quizzes.pth with
    its sidecar, zoo.json and the model card (evaluated on world quizzes alone
    and with the test c-quizzes mixed in, as ``eval`` does). ``note``: a
    sentence for the card (e.g. why the culture threshold differs from the
    reference's)."""
    from culture.training import CONFIG_FILE, STATE_FILE

    run_dir, dest = Path(run_dir), Path(dest)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise CultureError(f"{run_dir} is not a training run ({CONFIG_FILE} missing)")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise CultureError(f"{cfg_path}: unreadable run configuration ({first_sentence(exc)})") from None
    state = load_tensors(run_dir / STATE_FILE, CultureError, "training state")
    ids = list(range(config["nb_models"])) if models is None else list(models)
    for k in ids:
        if not (run_dir / f"gpt_{k:03d}.pth").is_file():
            raise CultureError(f"{run_dir} has no model {k} (gpt_{k:03d}.pth)")
    # the zoo is built in a staging folder and replaces dest whole at the end (its
    # old SAEs go with it: they do not fit the new weights); a failure leaves dest as it was
    with atomic_dir(dest) as staging:
        info = _pack_into(staging, run_dir, config, state, ids, num_samples, seed, progress, note)
    return info


def _pack_into(dest: Path, run_dir: Path, config: dict, state: dict, ids: list[int], num_samples: int,
               seed: int, progress, note: str | None = None) -> dict:
    from culture.evaluation import evaluate, make_test_set
    from culture.training import C_QUIZZES_INFO_FILE, run_stages

    loaded = []
    for new_id, k in enumerate(ids):
        model, acc = load_mygpt(run_dir / f"gpt_{k:03d}.pth")
        save_checkpoint(model, acc if acc is not None else 0.0, dest / f"gpt_{new_id:03d}.pth", half=True)
        loaded.append(load_mygpt(dest / f"gpt_{new_id:03d}.pth")[0])  # evaluate what ships (fp16 weights)
    c_path = run_dir / "c_quizzes.pth"
    n_c = (0, 0)
    if c_path.is_file():
        train, test = load_c_quizzes(c_path)
        n_c = (len(train), len(test))
        if len(train) + len(test):
            save_c_quizzes(dest / "c_quizzes.pth", [train], [test])
        elif (dest / "c_quizzes.pth").exists():
            (dest / "c_quizzes.pth").unlink()
    sidecar = run_dir / C_QUIZZES_INFO_FILE
    if sidecar.is_file() and (dest / "c_quizzes.pth").exists():
        atomic_write_text(dest / C_QUIZZES_INFO_FILE, sidecar.read_text())
    elif (dest / C_QUIZZES_INFO_FILE).exists():
        (dest / C_QUIZZES_INFO_FILE).unlink()
    test_c = load_c_quizzes(dest / "c_quizzes.pth")[1] if (dest / "c_quizzes.pth").exists() else None
    test_set = make_test_set(n=num_samples, tasks=config.get("tasks"), c_quizzes=test_c, seed=seed)
    results = evaluate(loaded, test_set, progress=progress)
    world_results = results
    if test_c is not None and len(test_c):
        world_set = make_test_set(n=num_samples, tasks=config.get("tasks"), seed=seed)
        world_results = evaluate(loaded, world_set, progress=progress)
    stages = run_stages(config, state)  # the --init-from source's stages, then this run
    info = {
        "command": config.get("command"),
        "run_dir": str(run_dir),
        "run_config": {k: v for k, v in config.items() if k not in ("command", "init_from")},
        "source_models": ids,
        "parameters": loaded[0].num_parameters,
        "architecture": loaded[0].config.to_dict(),
        "rounds": sum(int(st["rounds"] or 0) for st in stages),
        "epochs": [int(state["epochs"][k]) for k in ids],
        "training_seconds": sum(float(st["training_seconds"] or 0.0) for st in stages),
        "stages": stages,
        "c_quizzes": {"train": n_c[0], "test": n_c[1]},
        "culture_phases": [dict(r) for r in state.get("culture_reports", [])],
        "note": note,
        "evaluation": {"num_samples": num_samples, "seed": seed, "results": results.to_dict()},
        "evaluation_world": {"num_samples": num_samples, "seed": seed, "results": world_results.to_dict()},
    }
    atomic_write_json(dest / "zoo.json", info)
    atomic_write_text(dest / "MODEL_CARD.md", model_card({**info, "size": zoo_size(dest)}))
    return info


def _stage_lines(info: dict) -> list[str]:
    """The commands that made the zoo: one per training stage (a stage after
    the first starts from the previous one with --init-from), then the pack."""
    from culture.training import zoo_stages

    stages = zoo_stages(info)
    lines = []
    if len(stages) > 1:
        lines += [f"In {len(stages)} stages; each stage after the first starts from the weights the previous one "
                  "packed (`--init-from bundled`, fresh Adam state, epoch counts carried on so every epoch draws "
                  "new quizzes):", ""]
    lines.append("```bash")
    for i, st in enumerate(stages, 1):
        secs = float(st.get("training_seconds") or 0.0)
        lines.append(f"# stage {i}: {st.get('rounds')} rounds, {secs / 3600:.2f} h, epochs per model after it "
                     f"{st.get('epochs')}")
        lines.append(st.get("command") or "(command not recorded)")
        for r in st.get("resumes") or []:
            resumed = r.get("command") or "(resumed; command not recorded)"
            lines.append(f"{resumed}   # resumed at round {r.get('round')}")
    lines += [f"culture-interp zoo pack --run {info.get('run_dir', 'RUN_DIR')}", "```", ""]
    return lines


def _greedy_table(rows: list[dict], group: str, title: str, order) -> list[str]:
    """Markdown lines of one greedy-accuracy table: a row per model, a column
    per key of ``row[group]`` (tasks or structures, headed with their markers
    when the results name them) in ``order``."""
    keys = order({key for r in rows for key in r.get(group, {})})
    if not keys:
        return []
    markers = {key: r[group][key].get("markers") for r in rows for key in r.get(group, {})}
    heads = [f"{key} {markers[key]}" if markers.get(key) not in (None, key) else key for key in keys]
    lines = ["", title, "", "| model | " + " | ".join(heads) + " |", "|---|" + "---|" * len(keys)]
    for k, r in enumerate(rows):
        cells = [f"{r[group][key].get('greedy_accuracy', float('nan')):.3f}" if key in r[group] else "-"
                 for key in keys]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return lines


def _noised_structures() -> str:
    """Which numbered structures (culture.quiz.STRUCTURES) carry prompt noise, in words."""
    noised = [str(i + 1) for i, st in enumerate(STRUCTURES) if st.noised]
    if not noised:
        return "no prompt noise"
    return f"prompt noise in structure{'s' if len(noised) > 1 else ''} {', '.join(noised)}"


def _structure_order(key: str) -> tuple[bool, int]:
    """Structure numbers in numeric order; "other" (an unknown structure) last."""
    return (not key.isdigit(), int(key) if key.isdigit() else 0)


def _last_options(cfg: dict) -> str:
    """The run's last non-reference training options, in words ('' when none)."""
    parts = []
    if cfg.get("ema_decay"):
        parts.append(f"weight average (EMA, decay {cfg['ema_decay']} per step): the shipped weights are the average")
    if cfg.get("train_structures"):
        parts.append("training quizzes from structures " + ", ".join(str(i) for i in cfg["train_structures"]))
    return "; since the last resume: " + "; ".join(parts) if parts else ""


def _culture_lines(info: dict) -> list[str]:
    """The culture phases: rule, threshold, cost per phase (candidates, kept, time)."""
    phases = info.get("culture_phases") or []
    cfg = info["run_config"]
    if not phases:
        return [f"- culture phases: none (the models never reached the threshold {cfg.get('threshold')})"]
    lines = ["", "## Culture phases", ""]
    threshold = cfg.get("threshold")
    lines.append(f"A phase runs when every model's expected sampled accuracy on the run's test set is at least "
                 f"{threshold}" + (" (the reference's 0.95)." if threshold == 0.95 else
                                  f" (the reference uses 0.95; this zoo {threshold})."))
    if info.get("note"):
        lines.append(info["note"])
    rule = phases[0].get("rule", {})
    lines += ["", f"Keep rule (the reference's): every model solves a candidate both ways with probability "
                  f">= {rule.get('understands')} or <= {rule.get('not_understands')} (averaged over "
                  f"{rule.get('averaging_rounds')} prompt-noise draws), and 1 to {rule.get('max_fail')} models "
                  f"are <= {rule.get('not_understands')}. Per kept quiz, `c_quizzes_info.json` records the phase, "
                  "the generating model and every model's solve probability.", "",
              "| phase | round | batches | generated | trivial | undecided | solved by all | failed by too many "
              "| kept (train + test) | time |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for i, p in enumerate(phases, 1):
        lines.append(f"| {i} | {p.get('round')} | {p.get('batches')} | {p.get('generated')} | {p.get('trivial')} | "
                     f"{p.get('undecided')} | {p.get('too_easy')} | {p.get('too_hard')} | {p.get('kept')} "
                     f"({p.get('kept_train')} + {p.get('kept_test')}) | {float(p.get('seconds') or 0) / 60:.1f} min |")
    lines += ["", "What the culture invents: `culture-interp culture report --source bundled`."]
    return lines


# --------------------------------------------------------------- SAEs


#: SAETrainSettings fields the bundled SAEs set, in order; ``sae train``'s option of a field is
#: the field's name (``lr`` is ``--lr``, ``n_batches_for_norm_estimate`` is ``--n-batches-for-norm-estimate``)
_SAE_OPTIONS = ("steps", "expansion_factor", "l1_coefficient", "lr", "n_batches_for_norm_estimate", "seed")


def _flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def sae_train_command(summary: dict, out: str) -> str:
    """The ``culture-interp sae train`` line that made an SAE, from its
    ``training_summary.json`` (model, hook and the settings the bundled SAEs set)."""
    st = summary.get("settings") or {}
    parts = ["culture-interp sae train", f"--model {summary.get('model_id', '?')}", "--source bundled",
             f"--hook-name {summary.get('hook_name') or st.get('hook_name')}", f"--out {out}"]
    parts += [f"{_flag(key)} {st[key]:g}" if isinstance(st.get(key), float) else f"{_flag(key)} {st[key]}"
              for key in _SAE_OPTIONS if st.get(key) is not None]
    return " ".join(parts)


def zoo_size(dest) -> tuple[int, int]:
    """(bytes, files) of the zoo folder (models, c-quizzes, SAEs, metadata)."""
    files = [p for p in Path(dest).rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def evaluate_bundled_saes(dest=ZOO_DIR, *, num_samples: int = 500, seed: int = 0, progress=None) -> list[dict]:
    """Held-out figures of every SAE in ``dest/sae`` (``culture.sae.evaluate_sae``
    on ``num_samples`` test quizzes of the zoo's tasks): one dict per SAE with
    its folder, model, seed, the training summary and the evaluation."""
    from culture.evaluation import make_test_set
    from culture.hooked import load_hooked
    from culture.sae import bundled_saes, evaluate_sae, load_sae
    from culture.sae.common import BUNDLED_SAE_FOLDER

    dest = Path(dest)
    info = json.loads((dest / "zoo.json").read_text()) if (dest / "zoo.json").is_file() else {}
    tasks = (info.get("run_config") or {}).get("tasks")
    test_set = make_test_set(n=num_samples, tasks=tasks, seed=seed)
    out = []
    from culture.sources import LocalSource

    src = LocalSource(dest)
    for b in bundled_saes(dest / BUNDLED_SAE_FOLDER):
        sae = load_sae(b.path)
        hooked = load_hooked(b.model, src, sae=True)
        res = evaluate_sae(hooked, sae, test_set, progress=progress).overall
        summary_path = b.path / "training_summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        out.append({
            "folder": f"{BUNDLED_SAE_FOLDER}/{b.path.relative_to(dest / BUNDLED_SAE_FOLDER).as_posix()}",
            "model": b.model, "seed": b.seed if b.seed is not None else (summary.get("settings") or {}).get("seed"),
            "extra_seed": b.seed is not None, "hook": sae.cfg.metadata.hook_name, "d_sae": int(sae.cfg.d_sae),
            "training": {k: summary.get(k) for k in ("steps", "training_tokens", "explained_variance", "l0",
                                                     "dead_features", "seconds")},
            "command": sae_train_command(summary, f"culture/zoo/{BUNDLED_SAE_FOLDER}/"
                                         f"{b.path.relative_to(dest / BUNDLED_SAE_FOLDER).as_posix()}")
            if summary else None,
            "heldout": {"num_samples": num_samples, "seed": seed,
                        **{k: res.get(k) for k in ("explained_variance", "l0", "dead_features", "dense_features",
                                                   "loss_recovered")}},
        })
    return out


def _sae_lines(saes: list[dict], size: tuple[int, int] | None) -> list[str]:
    lines = []
    if saes:
        n = saes[0]["heldout"]["num_samples"]
        lines += ["## SAEs", "",
                  "SAELens sparse autoencoders shipped with the zoo (`--sae bundled`; `load_sae(\"bundled\", "
                  "\"gpt-K\")`), one per model, plus further seeds of a model (`gpt-K-seedS`: the ceiling of "
                  f"feature universality). Held-out figures: `culture-interp sae eval` on {n} test quizzes "
                  "(variance explained, mean features per position, features never firing, loss recovered).", "",
                  "| folder | model | seed | hook | features | var. expl. | L0 | dead | loss recovered |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in saes:
            h = e["heldout"]

            def num(v, fmt):
                return "-" if v is None else format(v, fmt)
            dead = h.get("dead_features") or 0
            lines.append(f"| `{e['folder']}` | {e['model']} | {e['seed']} | {e['hook']} | {e['d_sae']:,} | "
                         f"{num(h.get('explained_variance'), '.3f')} | {num(h.get('l0'), '.1f')} | "
                         f"{dead} ({100 * dead / max(e['d_sae'], 1):.1f}%) | {num(h.get('loss_recovered'), '.3f')} |")
        lines += ["", "Trained with:", "", "```bash"]
        lines += [e["command"] or f"# {e['folder']}: no training_summary.json" for e in saes]
        lines += ["```", "", "Reproduce the figures: `culture-interp zoo card --update`.", ""]
    if size is not None:
        lines += [f"Zoo size: {size[0] / 2**20:.1f} MiB in {size[1]} files (models, SAEs, metadata).", ""]
    return lines


def refresh_card(dest=ZOO_DIR, *, num_samples: int = 500, seed: int = 0, progress=None) -> dict:
    """Evaluate the zoo's SAEs held out, store the figures in ``zoo.json``
    (key ``saes``) and rewrite ``MODEL_CARD.md`` (with its SAE section and the
    zoo's size). Returns the updated info."""
    dest = Path(dest)
    if not (dest / "zoo.json").is_file():
        raise CultureError(f"{dest} has no zoo.json (pack a training run first: culture-interp zoo pack)")
    info = json.loads((dest / "zoo.json").read_text())
    info["saes"] = evaluate_bundled_saes(dest, num_samples=num_samples, seed=seed, progress=progress)
    atomic_write_json(dest / "zoo.json", info)
    info["size"] = zoo_size(dest)
    atomic_write_text(dest / "MODEL_CARD.md", model_card(info))
    return info


def model_card(info: dict) -> str:
    cfg = info["run_config"]
    arch = info["architecture"]
    results = (info.get("evaluation_world") or info["evaluation"])["results"]
    rows = results["models"] if isinstance(results, dict) and "models" in results else results
    mixed = info["evaluation"]["results"]
    mixed_rows = mixed["models"] if isinstance(mixed, dict) and "models" in mixed else mixed
    n_c = info["c_quizzes"]["train"] + info["c_quizzes"]["test"]
    lines = [
        "# culture-interp bundled zoo",
        "",
        "Small culture GPTs trained on this package's world-quiz generator with `culture-interp train`,",
        "shipped so that every command works offline: `--source bundled`.",
        "",
        *(["**Status: still training.** Below the zoo's target of 90% greedy accuracy per model; "
            "continue with `culture-interp train --out RUN --resume` (or `--init-from bundled` on a new "
            "machine) and pack again.", ""]
          if min(r["greedy_accuracy"] or 0.0 for r in rows) < TARGET_GREEDY_ACCURACY else []),
        "## How they were trained",
        "",
        *_stage_lines(info),
        f"- tasks: {', '.join(cfg.get('tasks') or ['the eight default tasks'])}",
        f"- models: {len(info['source_models'])} (seed {cfg.get('seed')} of the run; model k is initialised "
        "from a seed derived from (run seed, k), so every model starts from different weights)",
        f"- architecture: dim_model {arch['dim_model']}, dim_keys {arch['dim_keys']}, dim_hidden "
        f"{arch['dim_hidden']}, heads {arch['nb_heads']}, blocks {arch['nb_blocks']} — "
        f"{info['parameters']:,} parameters, fp16 weights",
        f"- training: {info['rounds']} rounds, epochs per model {info['epochs']} in all, "
        f"{cfg.get('train_samples')} quizzes per epoch, batch {cfg.get('batch_size')}, "
        f"Adam lr {cfg.get('lr')} (the last one set; see the commands), "
        f"dropout {cfg.get('dropout')}, prompt noise {cfg.get('prompt_noise')}{_last_options(cfg)}",
        f"- training time: {info['training_seconds'] / 3600:.2f} h on CPU (2 cores)",
        f"- culture quizzes: {info['c_quizzes']['train']} train, {info['c_quizzes']['test']} test",
        *_culture_lines(info),
        "",
        "## Accuracy (culture-interp eval, "
        f"{info['evaluation']['num_samples']} quizzes, seed {info['evaluation']['seed']}"
        + (", world quizzes only: `--no-c-quizzes`)" if n_c else ")"),
        "",
        "| model | perplexity | greedy acc | expected sampled acc |",
        "|---|---|---|---|",
    ]
    for k, r in enumerate(rows):
        lines.append(f"| {k} | {r['perplexity']:.4f} | {r['greedy_accuracy']:.4f} | {r['expected_accuracy']:.4f} |")
    lines += _greedy_table(rows, "by_task", "Greedy accuracy per task:", sorted)
    lines += _greedy_table(rows, "by_structure", f"Greedy accuracy per structure ({_noised_structures()}):",
                           lambda keys: sorted(keys, key=_structure_order))
    ids = " ".join(str(k) for k in range(len(rows)))
    n = info['evaluation']['num_samples']
    lines += ["", f"Reproduce: `culture-interp eval --models {ids} --source bundled --num-samples {n}"
              + (" --no-c-quizzes`" if n_c else "`")]
    if n_c and mixed_rows and "culture" in mixed_rows[0].get("by_task", {}):
        lines += ["", f"With the test c-quizzes mixed in (the reference protocol, `culture-interp eval --models {ids} "
                      f"--source bundled --num-samples {n}`), greedy / expected accuracy on the "
                      f"{mixed_rows[0]['by_task']['culture']['n']} c-quizzes of that test set:", "",
                  "| model | culture greedy | culture expected | all greedy |", "|---|---|---|---|"]
        for k, r in enumerate(mixed_rows):
            c = r["by_task"]["culture"]
            lines.append(f"| {k} | {c['greedy_accuracy']:.3f} | {c['expected_accuracy']:.3f} | "
                         f"{r['greedy_accuracy']:.3f} |")
    lines.append("")
    lines += _sae_lines(info.get("saes") or [], info.get("size"))
    return "\n".join(lines)
