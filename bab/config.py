"""Typed, frozen configuration tree loaded from TOML or YAML.

Every option lives in a dataclass field with a default and a ``help`` metadata string; the
reference printed by ``bab config --dump`` is generated from these fields. Unknown keys are
rejected with a "did you mean" suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override is invalid (bad key, type or value)."""


def opt(default: Any, help: str, choices: Any = None) -> Any:
    """A dataclass field with a help string and optional allowed values (a tuple, or a
    function returning one, for registries that grow)."""
    return field(default=default, metadata={"help": help, "choices": choices})


def _choices(f: dataclasses.Field) -> tuple[Any, ...] | None:
    choices = f.metadata.get("choices")
    return choices() if callable(choices) else choices


def _method_names() -> tuple[str, ...]:
    from bab.methods import method_names

    return method_names()


@dataclass(frozen=True)
class FalsifyConfig:
    """Counterexample search run before any bounding."""

    enabled: bool = opt(True, "Run the attack phase before bounding.")
    random_samples: int = opt(2048, "Uniform random inputs tried per region (plus box centre and corners).")
    pgd_restarts: int = opt(8, "PGD restarts per clause (random starting points in the box).")
    pgd_steps: int = opt(60, "PGD iterations per restart.")
    pgd_step_size: float = opt(0.1, "Initial PGD step as a fraction of each input's box width.")
    max_batch: int = opt(4096, "Largest batch evaluated at once during the attack.")
    sample_seconds: float = opt(2.0, "Input-split BaB (low-dimensional inputs, where uniform samples can hit a small violating region that has no useful gradient): batches of uniform inputs for up to this many seconds in all, and at most sample_share of the time left; 0: off.")
    sample_share: float = opt(0.02, "... see sample_seconds.")
    sample_side_share: float = opt(0.1, "Of those uniform samples, 0.25 s come before the search; the rest run between its steps while they have taken at most this share of the search's time.")
    time_share: float = opt(0.2, "The attack phase stops (bounding starts) once it has used this share of the instance's time; BaB keeps attacking its open domains (1: no cap).")


@dataclass(frozen=True)
class BoundingConfig:
    """Incomplete bounding (a Bounder from bab.bounding)."""

    dtype: str = opt("float64", "Floating-point type of the final bound pass (float64 keeps the last comparison sound at little cost).", ("float32", "float64"))
    safety_margin: float = opt(1e-6, "A clause counts as infeasible only when its lower bound exceeds this margin (absolute) plus a relative float32 slack.")


@dataclass(frozen=True)
class VerifyConfig:
    """The whole-instance pipeline."""

    method: str = opt("default", "Verification method run after falsification: 'default' or a single incomplete bounder (registry: bab/methods.py).", _method_names)
    device: str = opt("cpu", "Torch device for bounding and attacks.", ("cpu", "cuda"))
    seed: int = opt(0, "Random seed for attacks and sampling.")
    timeout: float = opt(300.0, "Wall-clock limit in seconds for one instance.")
    threads: int = opt(0, "Torch intra-op threads (0: automatic, one thread for small networks, else torch's default).")
    fast_path: bool = opt(True, "Try the NumPy fast path first (fully connected ReLU networks with box inputs, no torch import; docs/fastpath.md); undecided instances go to the torch pipeline.")
    fast_path_budget: float = opt(5.0, "Seconds the fast path may spend before it hands the instance to the torch pipeline.")
    fast_path_max_neurons: int = opt(4096, "Largest number of hidden ReLU neurons the fast path takes.")


@dataclass(frozen=True)
class SolverConfig:
    """Exact and LP solvers (encoders/): the milp, lp, lp-full and smt methods and BaB leaves."""

    backend: str = opt("auto", "LP/MILP back end: 'auto' (Gurobi when licensed and the model fits, else OR-Tools), 'gurobi' (falls back to OR-Tools on licence/size errors) or 'ortools'.", ("auto", "gurobi", "ortools"))
    mip_solver: str = opt("SCIP", "OR-Tools MILP solver.", ("SCIP", "CBC"))
    lp_solver: str = opt("GLOP", "OR-Tools LP solver.", ("GLOP", "PDLP"))
    intermediate: str = opt("auto", "Intermediate bounds for big-M constants and triangle relaxations: 'auto' (CROWN, IBP if CROWN fails), 'crown' or 'ibp'.", ("auto", "crown", "ibp"))
    tighten: str = opt("lp", "Before the milp/smt encoding, tighten every ReLU/max-pool input bound by LP over the triangle relaxation, layer by layer ('none': use the bounder's bounds as they are).", ("lp", "none"))
    feasibility_tol: float = opt(1e-7, "Primal feasibility and integrality tolerance passed to the solvers.")
    margin: float = opt(1e-6, "A solver bound proves a clause infeasible only above max(margin, 10*feasibility_tol) times (1 + magnitudes).")
    cex_margin: float = opt(1e-5, "Clause violation (relative) the MILP aims for, so that its point survives the float32 replay.")
    z3_max_neurons: int = opt(16, "Largest number of unstable ReLUs for which Z3 re-checks a result that was decided within tolerance.")
    recheck: bool = opt(True, "Re-check near-tolerance MILP answers and points that fail the replay with Z3 (exact) when at most z3_max_neurons neurons are unstable, instead of answering unknown.")
    threads: int = opt(1, "Solver threads (Gurobi; SCIP and GLOP are single-threaded).")


@dataclass(frozen=True)
class MultiNeuronConfig:
    """The multi-neuron LP bounder ``krelu`` (joint constraints over groups of unstable ReLUs)."""

    k: int = opt(2, "Neurons per group (2: exact 4-d hull; 3: projected 6-d hull, slower).", (2, 3))
    groups_per_layer: int = opt(20, "Groups per ReLU layer and domain, chosen by overlap of their inputs.")
    time_limit: float = opt(30.0, "Seconds per domain for constraint generation plus the LPs.")


@dataclass(frozen=True)
class BabConfig:
    """Branch and bound (the complete search after the incomplete passes)."""

    input_split_threshold: int = opt(20, "Split the input box (not ReLUs) when the network has at most this many inputs.")
    input_branching: str = opt("auto", "Input-split brancher: 'auto' interleaves the searches of the input_portfolio branchers (see docs/input_split.md); or one of 'smear', 'bound-improvement', 'widest'.", ("auto", "smear", "bound-improvement", "widest"))
    input_portfolio: str = opt("bound-improvement+smear", "Branchers the 'auto' input brancher runs in turns, joined by '+'.")
    portfolio_slice: int = opt(1000, "Domains the first turn of each portfolio search may visit; the turn doubles every round.")
    bounder: str = opt("", "Bounder that drives BaB instead of the defaults, any name of the bounder registry (bab/taxonomy.py), e.g. 'zonotope' (AI2). ReLU-split BaB is built on beta-CROWN's warm starts, so a bounder set here makes BaB split the input box; '' keeps the defaults (input_bounder cascade, beta-CROWN).")
    input_bounder: str = opt("crown", "Bounders for input-split sub-boxes, cheapest first, joined by '+' (e.g. 'crown-fwd+crown'): each later one bounds only the boxes the earlier ones left open.")
    input_late_bounder: str = opt("alpha-crown", "Input split: a tighter, costlier bounder that joins the end of the input_bounder cascade once input_late_after boxes of a region were bounded (hard instances only); '' for none.")
    input_late_after: int = opt(5000, "Boxes bounded in a region before input_late_bounder joins the cascade.")
    input_exact_unstable: int = opt(40, "Input split, hard instances (still open after input_exact_after of the time, and input_late_after boxes bounded): a box whose bounding pass leaves at most this many ReLUs unstable first tries the exact leaf solver (MILP on the box, within input_exact_share of the time, input_exact_time_limit per clause); a box it does not settle is split, and its sub-boxes try again once their count fell by a quarter; 0: only unsplittable boxes.")
    input_exact_after: float = opt(0.25, "Input split: the exact tries of input_exact_unstable start only after this share of the time left when the search began (an instance still open by then is a hard one).")
    input_exact_share: float = opt(0.9, "Input split: the share of the run's time the exact tries of input_exact_unstable may take.")
    input_exact_time_limit: float = opt(1.0, "Input split: seconds per clause of one exact try of input_exact_unstable; a box it does not settle is split.")
    bound_chunk: int = opt(256, "Largest number of domains bounded in one pass (the deadline is checked between passes); small chunks keep the coefficient tensors in the CPU cache (raise it on CUDA).")
    batch_size: int = opt(2048, "Domains split per iteration (their children are bounded in one batched pass).")
    order: str = opt("best-first", "Domain selection: best-first (worst bound first) or depth-first (caps memory).", ("best-first", "depth-first"))
    max_domains: int = opt(5_000_000, "Open-domain cap (memory budget); beyond it the answer is unknown.")
    dtype: str = opt("float32", "Floating-point type of the BaB bound passes (near-ties are re-checked in float64).", ("float32", "float64"))
    relu_branching: str = opt("fsb", "ReLU-split brancher: 'fsb' (filtered smart branching: top candidates by BaBSR and intercept scores, each tried with a cheap bound pass), 'babsr' or 'widest' (baseline).", ("fsb", "babsr", "widest"))
    fsb_candidates: int = opt(3, "FSB: candidates taken from each of its two score filters.")
    relu_batch_size: int = opt(256, "ReLU-split domains split per iteration (both children of each are bounded in one batched pass); capped by memory_budget_mb.")
    memory_budget_mb: int = opt(4096, "Memory for ReLU-split BaB: caps the domain batch and the number of open domains (beyond it the answer is unknown).")
    batch_regions: bool = opt(True, "Bound the input regions of a property (a disjunction of boxes) as one batch: one search whose domains carry their region, roots of all regions in one pass (false: one search per region, one after another).")

    def __post_init__(self) -> None:
        names = ("smear", "bound-improvement", "widest")
        for name in self.input_portfolio.split("+"):
            if name not in names:
                raise ConfigError(f"bab.input_portfolio: unknown brancher '{name}'{_suggest(name, list(names))}")
        if self.input_bounder == "crown" and self.input_late_bounder in ("", "alpha-crown") and not self.bounder:
            return  # the default: skip importing torch just to validate it
        from bab.bounding import BOUNDERS as known

        names = self.input_bounder.split("+") + [n for n in (self.input_late_bounder, self.bounder) if n]
        for name in names:
            if name not in known:
                raise ConfigError(f"bab.bounder/input_bounder/input_late_bounder: unknown bounder '{name}'{_suggest(name, list(known))}")


@dataclass(frozen=True)
class BetaConfig:
    """beta-CROWN, the bounder of ReLU-split BaB: optimised ReLU slopes (alpha) and split multipliers (beta)."""

    iterations: int = opt(20, "Projected Adam steps per batch of sub-domains (warm-started from the parents).")
    lr_alpha: float = opt(0.1, "Adam step size of the ReLU slopes.")
    lr_beta: float = opt(0.05, "Adam step size of the split multipliers.")
    lr_decay: float = opt(0.98, "Step-size decay per Adam step.")
    root_iterations: int = opt(20, "alpha-CROWN steps at the root (every clause row of the region at once).")
    root_optimize_intermediate: bool = opt(True, "At the root, also optimise the slopes of the intermediate-bound passes (tighter boxes for every sub-domain; skipped when too large or too slow, see root_intermediate_share).")
    root_intermediate_share: float = opt(1.0, "Optimise the root's intermediate slopes only when root_iterations such steps, each estimated at 3x the measured time of the root's first CROWN sweep, fit in this share of the root's time limit; otherwise only the final slopes are optimised (no intermediate pass re-run).")
    intermediate: str = opt("after-split", "Intermediate bounds of children: 'after-split' (CROWN passes with the fixed phases for the layers above the newest split), 'all', or 'none' (the parent's boxes).", ("after-split", "all", "none"))
    intermediate_depth: int = opt(8, "Recompute intermediate bounds only for children at most this deep; deeper ones reuse their parent's boxes.")
    intermediate_share: float = opt(0.3, "... and only while the recomputing passes have taken at most this share of the BaB run's time.")
    attack: bool = opt(True, "Try the minimising input corners of the bounds (and a few PGD steps from the best) as counterexamples during the search.")
    attack_steps: int = opt(10, "PGD steps from the most promising corners per bounded batch (0: corners only).")
    leaf_time_limit: float = opt(10.0, "Seconds the exact leaf solver may spend on one fully split domain.")
    milp_unstable: int = opt(3, "Domains with at most this many free unstable ReLUs (and at least one) are tried once by MILP before splitting on (0: only fully split domains go to the solver).")
    milp_time_limit: float = opt(2.0, "Seconds MILP may spend on one such partly split domain; undecided ones go back to splitting.")
    milp_share: float = opt(0.2, "Partly split domains go to MILP only while those tries have taken at most this share of the BaB run's time.")
    clause_milp_share: float = opt(0.5, "ReLU networks: between BaB steps, a whole-clause MILP (the root's intermediate boxes; Gurobi only, since it resumes where a slice stopped) advances the clauses in turns (docs/relu_split.md) while its slices have taken at most this share of the search; a clause it proves leaves the search, a point it finds is replayed (0: off).")
    refine_after: float = opt(0.2, "ReLU networks, one region, with a deadline: a search still open after this share of the time left when it began stops, the unstable ReLU inputs of the root are tightened by MILP layer by layer (Gurobi's proven bounds; encoders/refine.py), and the search restarts from roots bounded with those intervals (docs/relu_split.md).")
    refine_share: float = opt(0.5, "... the MILP refinement takes at most this share of the time then left (0: no refinement, no restart).")
    refine_neuron_time: float = opt(1.0, "... and at most this many seconds per bound (a neuron's lower or upper bound).")
    lp_share: float = opt(0.5, "Networks with nonlinearities other than ReLU (sigmoid, tanh, sin, ...): every domain is tried once by the LP over its relaxation (its split-narrowed boxes bound every neuron, not only the linear relaxation lines) while those tries have taken at most this share of the BaB run's time; a domain the LP does not refute is split as usual (0: off).")


@dataclass(frozen=True)
class Config:
    """Root of the configuration tree."""

    verify: VerifyConfig = field(default_factory=VerifyConfig)
    falsify: FalsifyConfig = field(default_factory=FalsifyConfig)
    bounding: BoundingConfig = field(default_factory=BoundingConfig)
    bab: BabConfig = field(default_factory=BabConfig)
    beta: BetaConfig = field(default_factory=BetaConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    multi_neuron: MultiNeuronConfig = field(default_factory=MultiNeuronConfig)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(options)})"


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check/convert a raw value to a field's type (bool, int, float, str)."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
    elif typ is int and not isinstance(value, bool):
        try:
            if isinstance(value, (int, str)):
                return int(value)
        except ValueError:
            pass
    elif typ is float and not isinstance(value, bool):
        try:
            if isinstance(value, (int, float, str)):
                return float(value)
        except ValueError:
            pass
    elif typ is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a nested dict, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a table of options, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown option '{where}'{_suggest(key, names)}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _build(typ, value, where + ".")
        else:
            kwargs[key] = _coerce(value, typ, where)
            choices = _choices(next(f for f in dataclasses.fields(cls) if f.name == key))
            if choices and kwargs[key] not in choices:
                raise ConfigError(f"{where}: {kwargs[key]!r} is not one of {', '.join(map(str, choices))}")
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested dicts (unknown keys raise :class:`ConfigError`)."""
    return _build(Config, data, "")


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if path.suffix.lower() in {".yaml", ".yml"}:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: {' '.join(str(exc).split())}") from None
        return data or {}
    raise ConfigError(f"{path}: config files must end in .toml, .yaml or .yml")


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overrides`` into a copy of ``base``."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``section.key=value`` into a nested dict (the value is coerced later)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    out: dict[str, Any] = {parts[-1]: value.strip()}
    for part in reversed(parts[:-1]):
        out = {part: out}
    return out


def load(path: str | Path | None = None, overrides: list[dict[str, Any]] | None = None) -> Config:
    """Load a config file (optional) and apply override dicts in order."""
    data: dict[str, Any] = load_file(path) if path else {}
    for extra in overrides or []:
        data = merge(data, extra)
    return from_dict(data)


def dump_reference(cls: type = Config, prefix: str = "") -> str:
    """The options reference (TOML with help comments), generated from the dataclasses."""
    lines: list[str] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            lines.append(f"[{prefix}{f.name}]")
            if typ.__doc__:
                lines.append(f"# {typ.__doc__.strip()}")
            lines.append(dump_reference(typ, f"{prefix}{f.name}."))
            continue
        choices = _choices(f)
        extra = f" One of: {', '.join(map(str, choices))}." if choices else ""
        lines.append(f"# {f.metadata.get('help', '')}{extra} ({typ.__name__})")
        lines.append(f"{f.name} = {_toml_value(f.default)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def dump_values(cfg: Any, prefix: str = "") -> str:
    """The effective values of a loaded config, one ``section.key = value`` per line."""
    lines = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(dump_values(value, f"{prefix}{f.name}."))
        else:
            lines.append(f"{prefix}{f.name} = {_toml_value(value)}\n")
    return "".join(lines)
