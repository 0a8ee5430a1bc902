"""What a zero-shot classifier embeds for each class: its name made readable, or a description, put through a
prompt (one template or a fixed ensemble of templates).

- :func:`parse_classes`: the classes a user names (``"cat,dog"``, ``"fresh=a positive review,rotten=..."``, or a
  ``.json`` / ``.txt`` file of names and descriptions), checked: no empty list, no empty or duplicate names.
- :func:`readable_name`: ``"animals_birds"`` -> ``"animals birds"``, ``"GoldenRetriever"`` -> ``"golden retriever"``.
- :data:`PROMPTS`: named prompt sets (template lists); a template with ``{}`` given directly is a one-template set.
- :func:`class_texts`: the texts to embed for each class (every template applied to every description).

Prompt ensembling (averaging the embeddings of several templates) follows CLIP (Radford et al., ICML 2021).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import DataError
from ..registry import Registry

__all__ = ["PROMPTS", "ClassSpec", "parse_classes", "readable_name", "prompt_templates", "class_texts"]

#: prompt sets by name: each entry's factory returns its list of templates (``{}`` is the class text)
PROMPTS: Registry[list[str]] = Registry("prompt set")


def _templates(*templates: str):
    return lambda: list(templates)


PROMPTS.add("name", _templates("{}"), description="the class name (or description) alone", modality="any")
PROMPTS.add("picture", _templates("a picture of {}.", "a drawing of {}.", "an illustration of {}.",
                                  "clip art of {}.", "a photo of {}."),
            description="five templates for images of any style (a picture / drawing / illustration / clip art / "
                        "photo of {}), averaged", modality="image")
PROMPTS.add("photo", _templates("a photo of {}."), description="CLIP's template 'a photo of {}.'", modality="image")
PROMPTS.add("review", _templates("{}", "this review is {}.", "a {} review."),
            description="three templates for opinions and reviews ({} / this review is {}. / a {} review.), "
                        "averaged", modality="text")


@dataclass
class ClassSpec:
    """Classes a user names.

    Attributes:
        labels: the class labels, in the given order (what predictions are called; matched against data labels).
        descriptions: label -> the texts that describe it (the readable name when none was given).
    """

    labels: list[str]
    descriptions: dict[str, list[str]]


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def readable_name(label: str) -> str:
    """A class label as words: separators (``_``, ``-``, ``.``, ``/``) become spaces and camelCase is split; lower
    case, one space between words.

    >>> readable_name("animals_birds"), readable_name("GoldenRetriever"), readable_name("t-shirt")
    ('animals birds', 'golden retriever', 't shirt')
    """
    s = _CAMEL.sub(" ", str(label))
    s = re.sub(r"[_\-./\\]+", " ", s)
    return " ".join(s.lower().split())


def _check_labels(labels: Sequence[str], where: str) -> None:
    if not labels:
        raise DataError(f"{where}: no classes given; name at least 2, e.g. classes=\"cat,dog\"")
    empty = [i for i, c in enumerate(labels) if not str(c).strip()]
    if empty:
        raise DataError(f"{where}: class {empty[0] + 1} has an empty name (got {list(labels)!r}); remove the extra "
                        "comma or name the class")
    seen: dict[str, int] = {}
    dups = []
    for c in labels:
        seen[c] = seen.get(c, 0) + 1
        if seen[c] == 2:
            dups.append(c)
    if dups:
        raise DataError(f"{where}: duplicate class name(s) {', '.join(repr(d) for d in dups)}; each class must be "
                        "named once (put alternative wordings in one description instead)")
    if len(labels) < 2:
        raise DataError(f"{where}: only one class ({labels[0]!r}); a classifier needs at least 2 classes")


def parse_classes(spec: Any) -> ClassSpec:
    """The classes a user names, checked.

    Args:
        spec: a comma-separated string (``"cat,dog"``; an entry ``label=description`` describes its class, and
            ``a|b`` gives several descriptions), a list of labels, a mapping ``{label: description or [descriptions]}``,
            or the path of a ``.json`` file holding such a list or mapping, or of a ``.txt`` file with one class per
            line (``label`` or ``label: description``).

    Raises:
        DataError: no classes, an empty or duplicate name, one class only, or an unreadable file; the message says
            which.
    """
    where = "classes"
    if isinstance(spec, (str, Path)) and str(spec).strip().lower().endswith((".json", ".txt")):
        path = Path(str(spec).strip()).expanduser()
        where = str(path)
        if not path.is_file():
            raise DataError(f"class file {path} not found; give classes=\"a,b,c\" or an existing .json / .txt file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read the class file {path}: {e}") from e
        if path.suffix.lower() == ".json":
            try:
                spec = json.loads(text)
            except ValueError as e:
                raise DataError(f"{path} is not valid JSON ({e}); write a list of names or an object "
                                "{\"label\": \"description\"}") from e
            if not isinstance(spec, (list, dict)):
                raise DataError(f"{path} holds a {type(spec).__name__}; write a list of names or an object "
                                "{\"label\": \"description\"}")
        else:
            entries = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
            spec = dict(_split_entry(e, ":") for e in entries) if entries else []
            if entries and len(spec) != len(entries):
                _check_labels([_split_entry(e, ":")[0] for e in entries], where)
    if isinstance(spec, str):
        entries = [e.strip() for e in spec.split(",")]
        if spec.strip() == "":
            entries = []
        pairs = [_split_entry(e, "=") for e in entries]
        _check_labels([p[0] for p in pairs], where)
        spec = dict(pairs)
    if isinstance(spec, Mapping):
        labels = [str(k).strip() for k in spec]
        _check_labels(labels, where)
        desc = {}
        for k, v in zip(labels, spec.values()):
            texts = [v] if isinstance(v, str) or v is None else list(v)
            texts = [t.strip() for part in texts if part is not None for t in str(part).split("|") if t.strip()]
            desc[k] = texts or [readable_name(k)]
        return ClassSpec(labels, desc)
    if isinstance(spec, (list, tuple)):
        labels = [str(s).strip() for s in spec]
        _check_labels(labels, where)
        return ClassSpec(labels, {k: [readable_name(k)] for k in labels})
    raise DataError(f"classes must be a comma-separated string, a list, a mapping or a .json/.txt file; got "
                    f"{type(spec).__name__}")


def _split_entry(entry: str, sep: str) -> tuple[str, str | None]:
    if sep in entry:
        label, desc = entry.split(sep, 1)
        return label.strip(), desc.strip() or None
    return entry.strip(), None


def prompt_templates(prompt: str | Sequence[str]) -> list[str]:
    """The templates of a prompt: a registered set's name (:data:`PROMPTS`), one template with ``{}``, or a list
    of templates.

    Raises:
        UnknownNameError: a name that is neither registered nor a template (the message lists the sets).
        DataError: a list that is empty or holds a template without ``{}``.
    """
    if isinstance(prompt, str):
        if "{}" in prompt:
            return [prompt]
        return list(PROMPTS.create(prompt))
    templates = [str(t) for t in prompt]
    if not templates:
        raise DataError("prompt: an empty list of templates; give at least one, e.g. 'a photo of {}.'")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise DataError(f"prompt template {bad[0]!r} has no '{{}}' where the class text goes; e.g. 'a photo of {{}}.'")
    return templates


def class_texts(spec: ClassSpec, prompt: str | Sequence[str] = "name") -> list[list[str]]:
    """For each class (in ``spec.labels`` order), the texts to embed: every template of ``prompt`` applied to every
    description of the class."""
    templates = prompt_templates(prompt)
    return [[t.replace("{}", d) for d in spec.descriptions[label] for t in templates] for label in spec.labels]
