"""Prints exact pins at the lowest versions pyproject.toml declares.

    python scripts/floor_pins.py --extra torch keras torch

prints one `name==version` line per package named, for pip's `-r`: the
`>=` floor of `[project] dependencies` and of the extras given, the highest
where several apply (an extra may raise the core's floor, as pip would
resolve them together). The floor test installs what the project declares,
read from the one place that declares it.
"""

import argparse
import pathlib
import re
import sys

import tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"

# `name>=version`, alone or before a comma or an environment marker.
_FLOOR = re.compile(
    r"^\s*([A-Za-z0-9._-]+)\s*>=\s*([0-9][A-Za-z0-9.+!-]*)\s*(?:[,;]|$)"
)


def _normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _release(version):
    return tuple(int(part) for part in re.findall(r"\d+", version))


def floors(project, extras=()):
    """The `>=` floor of every package that has one, by normalized name.

    Args:
        project: The `[project]` table of pyproject.toml.
        extras: Names of optional-dependency groups whose floors count
            besides the core dependencies'.

    Returns:
        A dict from normalized package name to its highest floor.

    Raises:
        ValueError: if one of `extras` is not defined.
    """
    optional = project.get("optional-dependencies", {})
    requirements = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            raise ValueError(
                f"Argument `extra` must be one of {sorted(optional)}. "
                f"Received: extra={extra!r}"
            )
        requirements += optional[extra]
    found = {}
    for requirement in requirements:
        match = _FLOOR.match(requirement)
        if match is None:
            continue
        name, version = _normalize(match.group(1)), match.group(2)
        if name not in found or _release(version) > _release(found[name]):
            found[name] = version
    return found


def pins(names, project, extras=()):
    """`name==floor` for each of `names`, in their order.

    Raises:
        ValueError: if one of `names` has no `>=` floor in the core
            dependencies or `extras`.
    """
    known = floors(project, extras)
    lines = []
    for name in names:
        version = known.get(_normalize(name))
        if version is None:
            raise ValueError(
                "Argument `names` must name packages with a `>=` floor in "
                f"the dependencies or extras {list(extras)} "
                f"({', '.join(sorted(known))}). Received: name={name!r}"
            )
        lines.append(f"{name}=={version}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help="an extra whose floors count too (repeatable)",
    )
    parser.add_argument("names", nargs="+", help="packages to pin")
    args = parser.parse_args(argv)
    with PYPROJECT.open("rb") as file:
        project = tomllib.load(file)["project"]
    try:
        print("\n".join(pins(args.names, project, args.extra)))
    except ValueError as error:
        sys.exit(f"floor_pins.py: {error}")


if __name__ == "__main__":
    main()
