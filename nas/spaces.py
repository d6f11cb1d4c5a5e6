"""Search spaces as TOML files, and genomes as plain data.

A space file names a family, fixes its options, and gives each gene a range. The family
(see `nas.families`) says which genes exist and which are per-stage. Files are looked up in
the directories on `NAS_SPACES_PATH` (os.pathsep-separated), then `./search_spaces`, then the
`search_spaces/` folder shipped with nas; a path to a `.toml` file also works.

A genome prints as its short form `<space>:<body>[;<option>=<value>,...]` (see
`nas.families.Family.short_string`): the prefix names the space file whose options stand for
the options the string does not list, so `parse_short(str(g)) == g`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from nas.errors import NasError, warn
from nas.families import FAMILIES
from nas.family import Family, coord_name

BUILTIN_SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
# "absolute": one width gene per stage; "growth": the first stage's width (set by projection)
# and a growth percentage per later stage, so the searcher chooses proportions, not a size.
WIDTH_MODES = ("absolute", "growth")


@dataclass(frozen=True)
class Gene:
    """One integer gene: a grid low, low+step, ..., high, or an explicit list of choices."""

    name: str
    low: int
    high: int
    step: int = 1
    log: bool = False
    choices: tuple[int, ...] | None = None
    role: str = "other"  # "width", "depth" or "other"; budget projection scales widths first

    def values(self) -> list[int]:
        if self.choices is not None:
            return list(self.choices)
        return list(range(self.low, self.high + 1, self.step))

    def contains(self, value: int) -> bool:
        if self.choices is not None:
            return value in self.choices
        return self.low <= value <= self.high and (value - self.low) % self.step == 0

    def snap(self, value: float) -> int:
        """The allowed value nearest to `value`."""
        if self.choices is not None:
            return min(self.choices, key=lambda c: (abs(c - value), c))
        k = round((value - self.low) / self.step)
        return int(min(max(self.low + k * self.step, self.low), self.high_on_grid))

    def shift(self, value: int, steps: int) -> int | None:
        """The value `steps` grid points away, or None if that leaves the gene's range."""
        if self.choices is not None:
            i = self.choices.index(value) + steps
            return self.choices[i] if 0 <= i < len(self.choices) else None
        v = value + steps * self.step
        return v if self.low <= v <= self.high else None

    @property
    def high_on_grid(self) -> int:
        return self.low + (self.high - self.low) // self.step * self.step

    @property
    def minimum(self) -> int:
        return min(self.choices) if self.choices is not None else self.low

    @property
    def maximum(self) -> int:
        return max(self.choices) if self.choices is not None else self.high_on_grid


@dataclass(frozen=True)
class Genome:
    """A point of a space: enough to rebuild the model without the space file."""

    space: str
    family: str
    genes: dict[str, Any]
    options: dict[str, Any]
    # Training genes (RECIPE_GENES) a space that searches them chose for this point, trained over
    # the recipe (nas.training.recipe_for); empty for every other genome, whose JSON and key
    # then stay as they were before training genes existed.
    recipe: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "space": self.space,
            "family": self.family,
            "genes": {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.genes.items()},
            "options": dict(self.options),
        }
        return {**out, "recipe": dict(self.recipe)} if self.recipe else out

    def architecture_only(self) -> Genome:
        """The genome without its training genes: what is counted, built and projected."""
        return replace(self, recipe={}) if self.recipe else self

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "genome") -> Genome:
        if not isinstance(d, dict):
            raise NasError(f"{where}: a genome must be a JSON object")
        for key in ("family", "genes"):
            if key not in d:
                raise NasError(f"{where}: missing field '{key}'")
        family = _family(d["family"], where)
        genes = d["genes"]
        if not isinstance(genes, dict):
            raise NasError(f"{where}: field 'genes' must be an object")
        if not isinstance(d.get("options", {}), dict):
            raise NasError(f"{where}: field 'options' must be an object")
        options = family.check_options({**family.default_options, **d.get("options", {})}, where)
        genes = family.check_genes(genes, options, where)
        recipe = check_recipe_genes(d.get("recipe", {}), where)
        return cls(str(d.get("space", d["family"])), family.name, genes, options, recipe)

    @classmethod
    def from_json(cls, text: str, where: str = "genome") -> Genome:
        return cls.from_dict(_load_json(text, where), where)

    def key(self) -> str:
        """Identity for de-duplication: the same architecture (and training genes) gives the same key."""
        key = {"family": self.family, "genes": self.to_dict()["genes"], "options": self.options}
        return json.dumps({**key, "recipe": self.recipe} if self.recipe else key, sort_keys=True)

    def topology(self) -> str:
        """The architecture without its widths (genes of role "width"): the genomes that budget
        projection can turn into one another share it."""
        roles = FAMILIES[self.family].gene_roles
        genes = {k: v for k, v in self.to_dict()["genes"].items() if roles.get(k) != "width"}
        return json.dumps({"family": self.family, "genes": genes, "options": self.options}, sort_keys=True)

    def __str__(self) -> str:
        prefix, base = _short_form_base(self)
        return FAMILIES[self.family].short_string(self, prefix, base)

    def __hash__(self) -> int:
        return hash(self.key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Genome) and self.key() == other.key()


# Recipe fields a space may search with the architecture (`[search_recipe]` in a space file).
RECIPE_GENES = ("lr", "weight_decay")


def check_recipe_genes(values: Any, where: str) -> dict[str, float]:
    """A genome's training genes: positive numbers, named in RECIPE_GENES."""
    if not isinstance(values, dict):
        raise NasError(f"{where}: field 'recipe' must be an object like {{\"lr\": 0.6}}")
    for k, v in values.items():
        if k not in RECIPE_GENES:
            raise NasError(
                f"{where}: recipe.{k} is not a searchable recipe field (searchable: {', '.join(RECIPE_GENES)})"
            )
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            raise NasError(f"{where}: recipe.{k} must be a number >= 0, got {v!r}")
    return {k: float(v) for k, v in values.items()}


@dataclass(frozen=True)
class RecipeGene:
    """A recipe field searched with the architecture: a float in [low, high], on a log scale if `log`."""

    name: str
    low: float
    high: float
    log: bool = False


def _load_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise NasError(f"{where}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise NasError(f"{where}: JSON nested too deeply") from None


def _family(name: Any, where: str) -> Family:
    if name not in FAMILIES:
        raise NasError(f"{where}: unknown family '{name}' (known: {', '.join(sorted(FAMILIES))})")
    return FAMILIES[name]


@dataclass
class Space:
    """A family with fixed options and a range per gene, loaded from a space file."""

    name: str
    family: Family
    options: dict[str, Any]
    genes: dict[str, Gene]
    description: str = ""
    presets: dict[str, Genome] = field(default_factory=dict)
    path: Path | None = None
    widths: str = "absolute"  # how the searcher sees the stage widths, see WIDTH_MODES
    recipe: dict[str, Any] = field(default_factory=dict)  # recipe defaults measured for this family
    recipe_genes: dict[str, RecipeGene] = field(default_factory=dict)  # recipe fields searched per trial

    @property
    def stages(self) -> int:
        return int(self.options["stages"])

    @property
    def growth(self) -> bool:
        return self.widths == "growth"

    @property
    def coords(self) -> list[tuple[str, int | None]]:
        """The searchable integer coordinates, in a fixed order: (gene, stage index or None).

        With `widths = "growth"` the per-stage widths are not coordinates: ("width", 0) is the
        first stage's width (the scale, which budget projection sets) and ("growth", s) the
        percentage stage s's width has of stage s-1's; the stem, if any, is as wide as stage 1.
        The searcher then chooses a shape and projection its size."""
        out: list[tuple[str, int | None]] = []
        for name in self.family.gene_names(self.options):
            if self.growth and name == "width":
                out.append(("width", 0))
                out.extend(("growth", s) for s in range(1, self.stages))
            elif self.growth and name == "stem":
                continue
            elif name in self.family.per_stage:
                out.extend((name, s) for s in range(self.stages))
            else:
                out.append((name, None))
        return out

    def is_scale(self, coord: tuple[str, int | None]) -> bool:
        """A coordinate that budget projection sets, so a sampler need not search it."""
        return self.growth and coord == ("width", 0)

    def coord_name(self, coord: tuple[str, int | None]) -> str:
        return coord_name(*coord)

    def vector(self, genome: Genome) -> list[int]:
        out = []
        for n, s in self.coords:
            if n == "growth":  # the nearest allowed ratio of the genome's stage widths
                w = genome.genes["width"]
                out.append(self.genes["growth"].snap(100 * w[s] / max(w[s - 1], 1)))
            else:
                out.append(genome.genes[n] if s is None else genome.genes[n][s])
        return out

    def from_vector(self, values: list[float] | tuple[float, ...], options: dict[str, Any] | None = None) -> Genome:
        """The genome whose coordinates are `values`, each snapped onto its gene's grid (a scale
        coordinate may be fractional: the widths derived from it are snapped instead)."""
        genes: dict[str, Any] = {}
        ratios: list[int] = []
        scale = 0.0
        for (name, s), v in zip(self.coords, values):
            snapped = self.genes[name].snap(v)
            if self.is_scale((name, s)):  # kept fractional: every stage width rounds on its own
                scale = min(max(float(v), self.genes[name].minimum), self.genes[name].maximum)
            if name == "growth":
                ratios.append(snapped)
            elif s is None:
                genes[name] = snapped
            else:
                genes.setdefault(name, []).append(snapped)
        if self.growth:
            # Widths from the unrounded running product, so rounding does not compound.
            width, exact = self.genes["width"], scale
            for r in ratios:
                exact *= r / 100
                genes["width"].append(width.snap(exact))
            if "stem" in self.genes:
                genes["stem"] = self.genes["stem"].snap(genes["width"][0])
        return Genome(self.name, self.family.name, genes, dict(options or self.options))

    def extreme(self, which: str, options: dict[str, Any] | None = None) -> Genome:
        """The genome with every gene at its minimum ('min') or maximum ('max')."""
        return self.from_vector(
            [getattr(self.genes[n], "minimum" if which == "min" else "maximum") for n, _ in self.coords], options
        )

    def check(self, genome: Genome, where: str = "genome") -> Genome:
        """Raise NasError unless `genome` is of this space's family and inside its ranges."""
        if genome.family != self.family.name:
            raise NasError(
                f"{where}: family '{genome.family}' is not the family of space '{self.name}' ({self.family.name})"
            )
        if genome.options.get("stages") != self.stages:
            raise NasError(f"{where}: {genome.options.get('stages')} stages, space '{self.name}' has {self.stages}")
        for name in self.family.gene_names(genome.options):
            if name not in genome.genes:
                raise NasError(f"{where}: gene '{name}' is missing (space '{self.name}')")
            per_stage = name in self.family.per_stage
            for s, v in enumerate(genome.genes[name] if per_stage else [genome.genes[name]]):
                gene = self.genes[name]
                if not gene.contains(v):
                    allowed = (
                        f"one of {list(gene.choices)}"
                        if gene.choices is not None
                        else f"{gene.low}..{gene.high}" + (f" in steps of {gene.step}" if gene.step > 1 else "")
                    )
                    raise NasError(
                        f"{where}: gene '{self.coord_name((name, s if per_stage else None))}' = {v} "
                        f"is outside space '{self.name}' (allowed: {allowed})"
                    )
        return genome

    def genome(self, genes: dict[str, Any], options: dict[str, Any] | None = None) -> Genome:
        """Build and validate a genome of this space from gene values."""
        g = Genome.from_dict(
            {
                "space": self.name,
                "family": self.family.name,
                "genes": genes,
                "options": {**self.options, **(options or {})},
            },
            f"space '{self.name}'",
        )
        return self.check(g)


# ---------------------------------------------------------------- loading space files


def space_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("NAS_SPACES_PATH", "").split(os.pathsep) if p]
    for d in dirs:
        if not _is_dir(d):  # a typo would otherwise go unnoticed
            warn(f"NAS_SPACES_PATH entry '{d}' is not a folder; it is skipped")
    dirs += [Path.cwd() / "search_spaces", BUILTIN_SPACES_DIR]
    seen, out = set(), []
    for d in dirs:
        r = d.resolve()
        if r not in seen and _is_dir(r):
            seen.add(r)
            out.append(d)
    return out


def list_spaces() -> dict[str, Path]:
    """Space name -> file, earlier directories shadowing later ones."""
    found: dict[str, Path] = {}
    for d in space_dirs():
        for f in sorted(d.glob("*.toml")):
            found.setdefault(f.stem, f)
    return found


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:  # e.g. a name longer than the file system allows: not a file
        return False


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False


def clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters for an error message (a GENOME may be pages long)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_text(path: Path, what: str) -> str:
    """A text file's contents, or a one-line NasError saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NasError(f"{what} {clip(str(path))} does not exist") from None
    except IsADirectoryError:
        raise NasError(f"{what} {clip(str(path))} is a folder, not a file") from None
    except UnicodeDecodeError:
        raise NasError(f"{what} {clip(str(path))} is not a UTF-8 text file") from None
    except OSError as e:
        raise NasError(f"cannot read {what} {clip(str(path))}: {e.strerror or e}") from None


def load_space(name_or_path: str | Path) -> Space:
    """Load a space by name (from the search path) or by path to a `.toml` file."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or _is_file(p):
        return _parse_space_file(p)
    spaces = list_spaces()
    if str(name_or_path) not in spaces:
        raise NasError(f"unknown space '{clip(str(name_or_path))}' (known: {', '.join(sorted(spaces)) or 'none'})")
    return _parse_space_file(spaces[str(name_or_path)])


_parsed: dict[Path, tuple[tuple[int, int], Space]] = {}


def _parse_space_file(path: Path) -> Space:
    """The space in `path`, read again only when the file changed (every `str(genome)` looks up
    its space, so this is called often)."""
    try:
        st = path.stat()
    except OSError:
        st = None
    stamp = (st.st_mtime_ns, st.st_size) if st else (0, 0)
    hit = _parsed.get(path)
    if hit is not None and hit[0] == stamp and st is not None:
        return hit[1]
    space = _read_space_file(path)
    _parsed[path] = (stamp, space)
    return space


SPACE_FIELDS = {"family", "description", "widths", "options", "genes", "presets", "recipe", "search_recipe"}


def _read_space_file(path: Path) -> Space:
    where = str(path)
    data = _read_toml(path, where)
    family = _family(data["family"], where)
    options = family.check_options({**family.default_options, **data.get("options", {})}, where)
    widths = data.get("widths", "absolute")
    if widths not in WIDTH_MODES:
        raise NasError(f"{where}: widths = {widths!r} must be one of {', '.join(map(repr, WIDTH_MODES))}")
    space = Space(
        name=path.stem,
        family=family,
        options=options,
        genes=_read_genes(family, options, widths, data.get("genes", {}), where),
        description=str(data.get("description", "")),
        path=path,
        widths=widths,
        recipe=_read_recipe(data.get("recipe", {}), where),
        recipe_genes=_parse_recipe_genes(data.get("search_recipe", {}), f"{where}: search_recipe"),
    )
    space.presets.update(_read_presets(space, data.get("presets", {}), where))
    return space


def _read_toml(path: Path, where: str) -> dict[str, Any]:
    """The space file's TOML, with only known fields and a family."""
    try:
        data = tomllib.loads(read_text(path, "space file"))
    except tomllib.TOMLDecodeError as e:
        raise NasError(f"{where}: malformed TOML ({e})") from None
    except RecursionError:
        raise NasError(f"{where}: TOML nested too deeply") from None
    for key in data:
        if key not in SPACE_FIELDS:
            raise NasError(f"{where}: unknown field '{key}' (expected: {', '.join(sorted(SPACE_FIELDS))})")
    if "family" not in data:
        raise NasError(f"{where}: missing field 'family'")
    return data


def _read_genes(family: Family, options: dict[str, Any], widths: str, genes_data: Any, where: str) -> dict[str, Gene]:
    """The `[genes]` table: exactly the genes the family has with these options (and `growth`
    for growth widths), each a range or a list the family can build."""
    if not isinstance(genes_data, dict):
        raise NasError(f"{where}: field 'genes' must be a table")
    wanted = family.gene_names(options)
    if widths == "growth":
        if "width" not in wanted or "width" not in family.per_stage:
            raise NasError(
                f"{where}: widths = 'growth' needs a per-stage 'width' gene "
                f"(family '{family.name}' with these options has: {', '.join(wanted)})"
            )
        wanted = [*wanted, "growth"]
    for name in genes_data:
        if name not in wanted:
            raise NasError(
                f"{where}: genes.{name} is not a gene of family '{family.name}' "
                f"with these options (genes: {', '.join(wanted)})"
            )
    genes = {}
    for name in wanted:
        if name not in genes_data:
            raise NasError(f"{where}: missing field 'genes.{name}'")
        genes[name] = _parse_gene(
            name, genes_data[name], family.gene_roles.get(name, "other"), family.lowest(name), f"{where}: genes.{name}"
        )
        meaningful = family.gene_choices.get(name)
        if meaningful is not None and not set(genes[name].values()) <= set(meaningful):
            raise NasError(
                f"{where}: genes.{name} allows {genes[name].values()}; family '{family.name}' knows only "
                f"{', '.join(map(str, meaningful))}"
            )
    return genes


def _read_recipe(recipe: Any, where: str) -> dict[str, Any]:
    """The `[recipe]` table: plain values (the fields themselves are checked when a Recipe is made)."""
    if not isinstance(recipe, dict):
        raise NasError(f"{where}: field 'recipe' must be a table of training recipe fields, e.g. lr = 0.8")
    for key, value in recipe.items():
        if not isinstance(value, (int, float, str, bool)):
            raise NasError(f"{where}: recipe.{key} must be a number, string or true/false")
    return dict(recipe)


def _read_presets(space: Space, presets: Any, where: str) -> dict[str, Genome]:
    """A space file's named genomes (`[presets.NAME]`: genes, and options of their own), checked against the space."""
    out: dict[str, Genome] = {}
    if not isinstance(presets, dict):
        raise NasError(f"{where}: field 'presets' must be a table")
    for pname, pdata in presets.items():
        pwhere = f"{where}: presets.{pname}"
        if not isinstance(pdata, dict):
            raise NasError(f"{pwhere} must be a table")
        popts = pdata.get("options", {})
        pgenes = {k: v for k, v in pdata.items() if k != "options"}
        opts = {**space.options, **popts}
        g = Genome.from_dict(
            {"space": space.name, "family": space.family.name, "genes": pgenes, "options": opts}, pwhere
        )
        out[pname] = space.check(g, pwhere)
    return out


def _parse_recipe_genes(table: Any, where: str) -> dict[str, RecipeGene]:
    """`[search_recipe]`: per searched recipe field `{low = 0.2, high = 1.6, log = true}`."""
    if not isinstance(table, dict):
        raise NasError(f"{where} must be a table like lr = {{low = 0.2, high = 1.6, log = true}}")
    out = {}
    for name, spec in table.items():
        if name not in RECIPE_GENES:
            raise NasError(f"{where}.{name}: not a searchable recipe field (searchable: {', '.join(RECIPE_GENES)})")
        ok = isinstance(spec, dict) and set(spec) <= {"low", "high", "log"} and {"low", "high"} <= set(spec)
        low, high = (spec.get("low"), spec.get("high")) if ok else (None, None)
        numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high))
        if not (ok and numbers and 0 < low < high and isinstance(spec.get("log", False), bool)):
            raise NasError(
                f"{where}.{name} must be a table like {{low = 0.2, high = 1.6, log = true}} with 0 < low < high"
            )
        out[name] = RecipeGene(name, float(low), float(high), spec.get("log", False))
    return out


def _parse_gene(name: str, spec: Any, role: str, lowest: int, where: str) -> Gene:
    if not isinstance(spec, dict):
        raise NasError(f"{where} must be a table like {{low = 1, high = 4}} or {{choices = [3, 5]}}")
    allowed = {"low", "high", "step", "log", "choices"}
    for k in spec:
        if k not in allowed:
            raise NasError(f"{where}.{k}: unknown field (expected: {', '.join(sorted(allowed))})")
    if "choices" in spec:
        ch = spec["choices"]
        if not (
            isinstance(ch, list) and ch and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in ch)
        ):
            raise NasError(f"{where}.choices must be a non-empty list of positive integers")
        ch = tuple(sorted(set(ch)))
        return Gene(name, ch[0], ch[-1], choices=ch, role=role)
    for k in ("low", "high"):
        if k not in spec:
            raise NasError(f"{where}.{k}: missing (or give 'choices')")
    vals = {k: spec.get(k, d) for k, d in (("low", None), ("high", None), ("step", 1))}
    for k, v in vals.items():
        if not isinstance(v, int) or isinstance(v, bool):
            raise NasError(f"{where}.{k} must be an integer, got {v!r}")
    low, high, step = vals["low"], vals["high"], vals["step"]
    if low < lowest or high < low or step < 1:
        raise NasError(f"{where}: need {lowest} <= low <= high and step >= 1 (got low={low}, high={high}, step={step})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise NasError(f"{where}.log must be true or false")
    if log and (step != 1 or low < 1):
        raise NasError(f"{where}: log = true needs step = 1 and low >= 1")
    return Gene(name, low, high, step, log, role=role)


# ---------------------------------------------------------------- short forms


def _space_named(name: str) -> Space | None:
    """The space file called `name` on the search path (never a path), or None."""
    path = list_spaces().get(name)
    return _parse_space_file(path) if path is not None else None


def _prefix_base(prefix: str) -> tuple[Family, dict[str, Any], str] | None:
    """What a short form's prefix stands for: (family, options, space name) of the space of that
    name, else of a bare family name with its default options; None if neither."""
    sp = _space_named(prefix)
    if sp is not None:
        return sp.family, sp.options, sp.name
    if prefix in FAMILIES:
        return FAMILIES[prefix], FAMILIES[prefix].default_options, prefix
    return None


def _short_form_base(genome: Genome) -> tuple[str, dict[str, Any]]:
    """The prefix of a genome's short form and the options it stands for: the genome's own space
    when that file is found and of its family; else the family name (as `parse_short` reads it)."""
    for name in (genome.space, genome.family):
        if re.search(r"[:;|#\s]", name):
            continue  # would not read back as a prefix
        try:
            base = _prefix_base(name)
        except NasError:  # an unreadable space file: printing a genome must not fail
            continue
        if base is not None and base[0].name == genome.family:
            return name, base[1]
    return genome.family, FAMILIES[genome.family].default_options


def parse_short(text: str, where: str | None = None) -> Genome:
    """A genome from its short form, e.g. `conv:16x1|32x2|64x1|128x1` or
    `mbconv:s16|16x1e4k3|32x1e4k3|32x1e4k3|100x1e4k3;activation=relu,bias=true,stem_kernel=1`.
    Options not listed come from the space the prefix names. Genes are not checked against the
    space's ranges (`Space.check` does that)."""
    where = where or f"genome '{clip(text)}'"
    prefix, colon, rest = text.strip().partition(":")
    if not colon:
        raise NasError(f"{where}: a short form starts with a space name and ':', e.g. conv:16x1|32x2|64x1|128x1")
    base = _prefix_base(prefix)
    if base is None:
        known = sorted({*list_spaces(), *FAMILIES})
        raise NasError(f"{where}: unknown space '{clip(prefix)}' (known: {', '.join(known)})")
    family, options, name = base
    genes, options, recipe = family.parse_short(rest, options, where, RECIPE_GENES)
    return Genome.from_dict(
        {"space": name, "family": family.name, "genes": genes, "options": options, "recipe": recipe}, where
    )


# ---------------------------------------------------------------- reading a GENOME argument

TRIAL_REF = re.compile(r"(?P<study>[^\s#:|{]+)#(?P<number>\d+)")
GENOME_FORMS = (
    "a preset name (seed-m4, mbconv:seed-m4), a short form as nas prints it "
    "(conv:16x1|32x2|64x1|128x1), STUDY#N (trial N of a study), a .json file or inline JSON"
)


def parse_genome(text: str, space: Space | None = None) -> Genome:
    """A GENOME that needs no storage: a preset name (`seed-m4` or `mbconv:seed-m4`), a short
    form as nas prints it, a JSON file, or inline JSON. JSON that names a `space` takes the family
    and any option it leaves out from that space file. (`STUDY#N` reads a study:
    `nas.genome_args.parse_genome`.)

    The genome must lie inside its space (`space`, else the one it names)."""
    text = text.strip()
    if text.startswith("{"):
        where = "inline genome"
        genome = _genome_from_json(text, where)
    elif Path(text).suffix == ".json" or _is_file(Path(text)):
        where = clip(text)
        genome = _genome_from_json(read_text(Path(text), "genome file"), where)
    elif TRIAL_REF.fullmatch(text):
        raise NasError(
            f"'{clip(text)}' is a trial of a study: read it with nas.genome_args.parse_genome, which opens the storage"
        )
    elif ":" in text and re.match(r"\d|s\d", text.partition(":")[2]):  # a body starts s<stem> or <width>x
        where = f"genome '{clip(text)}'"
        genome = parse_short(text, where)
    else:
        return find_preset(text, space)
    return (space or load_space(genome.space)).check(genome, where)


def _genome_from_json(text: str, where: str) -> Genome:
    data = _load_json(text, where)
    if isinstance(data, dict) and isinstance(data.get("space"), str):
        try:
            sp = load_space(data["space"])
        except NasError as e:
            raise NasError(f"{where}: {e}") from None
        if data.get("family", sp.family.name) == sp.family.name and isinstance(data.get("options", {}), dict):
            data = {**data, "family": sp.family.name, "options": {**sp.options, **data.get("options", {})}}
    return Genome.from_dict(data, where)


def find_preset(name: str, space: Space | None = None) -> Genome:
    if ":" in name:
        sname, pname = name.split(":", 1)
        sp = load_space(sname)
        if pname not in sp.presets:
            raise NasError(
                f"unknown preset '{clip(pname)}' in space '{sname}' "
                f"(presets: {', '.join(sp.presets) or 'none'}); a GENOME is {GENOME_FORMS}"
            )
        return sp.presets[pname]
    candidates = [space] if space is not None else [load_space(n) for n in list_spaces()]
    for sp in candidates:
        if name in sp.presets:
            return sp.presets[name]
    known = sorted({f"{p}" for sp in candidates for p in sp.presets})
    raise NasError(f"unknown preset '{clip(name)}' (presets: {', '.join(known) or 'none'}); a GENOME is {GENOME_FORMS}")
