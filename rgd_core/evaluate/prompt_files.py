"""Read evaluation prompt files: the I2P CSV and plain prompt lists (.txt / .json / .csv).

The I2P CSV (Schramowski et al., CVPR 2023; ESD's ``unsafe-prompts4703.csv``) has the columns ``prompt``,
``categories``, ``hard``, ``inappropriate_percentage``, ``nudity_percentage``, ``q16_percentage``,
``sd_safety_percentage``, ``prompt_toxicity``, ``lexica_url``, ``evaluation_seed``, ``evaluation_guidance``,
``sd_image_width``, ``sd_image_height``, ``sd_model``, ``case_number`` (plus an unnamed index column). Only
``prompt`` is required; any other column may be missing and is then ``None``. The RGD paper evaluates nudity on
the rows with ``nudity_percentage > 0`` (854 of 4,703), in file order: ``read_i2p_csv(path, min_nudity_percentage=0)``.

Rows keep their file order. Nothing here needs torch.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from rgd_core.errors import RGDInputError

PROMPT_COLUMN = "prompt"
_KNOWN_COLUMNS = (
    "prompt", "categories", "hard", "inappropriate_percentage", "nudity_percentage", "evaluation_seed",
    "evaluation_guidance", "sd_image_width", "sd_image_height", "case_number",
)


@dataclass(frozen=True)
class Prompt:
    """One row of a prompt CSV. ``row`` is the 0-based data-row position in the file; ``extra`` holds other columns."""

    prompt: str
    row: int
    nudity_percentage: float | None = None
    inappropriate_percentage: float | None = None
    categories: tuple[str, ...] = ()
    hard: bool | None = None
    evaluation_seed: int | None = None
    evaluation_guidance: float | None = None
    width: int | None = None
    height: int | None = None
    case_number: int | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)


def _number(value: str | None, kind: type, column: str, path: Path, line: int):
    if value is None or value.strip() == "":
        return None
    try:
        number = float(value)
        if kind is int:
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        return number
    except ValueError:
        raise RGDInputError(
            f"{path}: line {line}: column {column!r} should be a number, got {value!r}; fix or clear that cell"
        ) from None


def _read_rows(path: str | Path) -> tuple[Path, list[str], list[tuple[int, dict[str, str]]]]:
    path = Path(path)
    if not path.is_file():
        raise RGDInputError(f"prompt file not found: {path}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, strict=True)
            header = list(reader.fieldnames or [])
            if PROMPT_COLUMN not in [name.strip() for name in header]:
                raise RGDInputError(
                    f"{path}: not a prompt CSV: no {PROMPT_COLUMN!r} column in the header "
                    f"(found {header[:6]!r}); give a CSV whose first line names a 'prompt' column"
                )
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise RGDInputError(f"{path}: not a UTF-8 text CSV file; give a CSV with a 'prompt' column") from None
    except csv.Error as error:
        raise RGDInputError(f"{path}: not a readable CSV file ({error}); give a CSV with a 'prompt' column") from None
    return path, header, rows


def read_i2p_csv(
    path: str | Path, min_nudity_percentage: float | None = None, limit: int | None = None
) -> list[Prompt]:
    """Read an I2P-style prompt CSV in file order (empty prompts are kept, so rows stay aligned with the file).

    min_nudity_percentage: keep only rows whose ``nudity_percentage`` is strictly greater (0 gives the paper's
    854-prompt nudity set); rows with an empty cell are dropped then. limit: keep at most this many (after filtering).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise RGDInputError(f"limit must be a positive whole number, got {limit!r}")
    path, header, rows = _read_rows(path)
    names = {name.strip(): name for name in header if name is not None}
    if min_nudity_percentage is not None and "nudity_percentage" not in names:
        raise RGDInputError(
            f"{path}: no 'nudity_percentage' column, so min_nudity_percentage cannot be applied; "
            "use an I2P CSV or leave the filter out"
        )
    prompts: list[Prompt] = []
    for index, (line, raw) in enumerate(rows):
        cells = {name: raw.get(original) for name, original in names.items()}
        text = (cells.get(PROMPT_COLUMN) or "").strip()  # empty prompts are kept: the real I2P file has one
        nudity = _number(cells.get("nudity_percentage"), float, "nudity_percentage", path, line)
        if min_nudity_percentage is not None and (nudity is None or not nudity > min_nudity_percentage):
            continue
        hard = _number(cells.get("hard"), int, "hard", path, line)
        categories = tuple(c.strip() for c in (cells.get("categories") or "").split(",") if c.strip())
        prompts.append(
            Prompt(
                prompt=text,
                row=index,
                nudity_percentage=nudity,
                inappropriate_percentage=_number(
                    cells.get("inappropriate_percentage"), float, "inappropriate_percentage", path, line
                ),
                categories=categories,
                hard=None if hard is None else bool(hard),
                evaluation_seed=_number(cells.get("evaluation_seed"), int, "evaluation_seed", path, line),
                evaluation_guidance=_number(cells.get("evaluation_guidance"), float, "evaluation_guidance", path, line),
                width=_number(cells.get("sd_image_width"), int, "sd_image_width", path, line),
                height=_number(cells.get("sd_image_height"), int, "sd_image_height", path, line),
                case_number=_number(cells.get("case_number"), int, "case_number", path, line),
                extra={k: v for k, v in cells.items() if k and k not in _KNOWN_COLUMNS and v is not None},
            )
        )
        if limit is not None and len(prompts) >= limit:
            break
    return prompts


def read_prompt_list(path: str | Path) -> list[str]:
    """Prompts from ``.txt`` (one per line, blank lines skipped), ``.json`` (a list of strings) or ``.csv``
    (a ``prompt`` column), in file order."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".json", ".csv"):
        raise RGDInputError(f"{path}: unsupported prompt file type {suffix or '(none)'!r}; use .txt, .json or .csv")
    if not path.is_file():
        raise RGDInputError(f"prompt file not found: {path}")
    if suffix == ".csv":
        prompts = [p.prompt for p in read_i2p_csv(path)]
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise RGDInputError(f"{path}: not a UTF-8 text file") from None
        if suffix == ".txt":
            prompts = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise RGDInputError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
            if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
                raise RGDInputError(f"{path}: the JSON must be a list of prompt strings")
            prompts = [item.strip() for item in data]
            if any(not item for item in prompts):
                raise RGDInputError(f"{path}: the JSON list contains an empty prompt")
    if not prompts:
        raise RGDInputError(f"{path}: contains no prompts")
    return prompts
