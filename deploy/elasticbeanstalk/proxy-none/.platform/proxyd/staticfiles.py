#!/usr/bin/env python3
"""The environment's static files option as proxyd static routes (run by
hooks/prebuild/00_proxyd_staticfiles.sh; Python 3 standard library only).

Without a platform proxy nobody else serves `aws:elasticbeanstalk:environment:proxy:staticfiles`
(option name: a URL path, value: a directory of the bundle; the Python platform sets
`/static: static` by default) nor the older `aws:elasticbeanstalk:container:python:staticfiles`.
EB's nginx turns each into `location PATH { alias /var/app/current/DIR; }`; this writes the
same mapping as routes between the `# BEGIN proxyd staticfiles` and `# END proxyd staticfiles`
lines of proxy.yaml, replacing what is there (so a second run changes nothing):

    - path: "/static/"
      static:
        root: "static"

No fallback: a file that is not there is a 404, as nginx's alias location answers.

  staticfiles.py --bundle DIR --config proxy.yaml --get-config /opt/elasticbeanstalk/bin/get-config

Exit 0 when the block is written, or when there is nothing to read (not on EB, get-config fails,
no option): a warning then, never a failed deployment. Exit 1, with the reason on stderr, for a
value that would leave the bundle (`..`, an absolute path) or that proxy.yaml cannot hold.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

NAMESPACES = [
    # Older first: the newer one wins for a path both set.
    "aws:elasticbeanstalk:container:python:staticfiles",
    "aws:elasticbeanstalk:environment:proxy:staticfiles",
]
BEGIN = "# BEGIN proxyd staticfiles"
END = "# END proxyd staticfiles"
WHO = "proxyd staticfiles hook"


class Refused(Exception):
    """A setting that must stop the deployment."""


def warn(msg):
    print(f"{WHO}: warning: {msg}", file=sys.stderr)


def say(msg):
    print(f"{WHO}: {msg}")


def option_settings(get_config):
    """The environment's option settings (namespace -> {name: value}), or None with a warning
    when they cannot be read: get-config's documented form, `get-config optionsettings`, prints
    them all as one JSON object."""
    if not os.path.isfile(get_config):
        warn(f"{get_config} is not there (not an Elastic Beanstalk instance?): no static routes")
        return None
    try:
        run = subprocess.run(
            [get_config, "optionsettings"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as e:
        warn(f"{get_config} optionsettings did not run ({e}): no static routes")
        return None
    if run.returncode != 0:
        err = run.stderr.decode(errors="replace").strip()
        warn(f"{get_config} optionsettings failed (exit {run.returncode}: {err}): no static routes")
        return None
    out = run.stdout.decode(errors="replace").strip()
    try:
        settings = json.loads(out) if out else {}
    except ValueError as e:
        warn(f"{get_config} optionsettings printed no JSON ({e}): no static routes")
        return None
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        warn(f"{get_config} optionsettings printed {type(settings).__name__}, not an object: no static routes")
        return None
    return settings


def printable(s):
    return s.isprintable() and "\t" not in s


def url_path(name, where):
    """`/static`, `/static/` and `//static/` are one prefix, `/static/`: a route matches a
    request path that starts with it. `/` (the whole site) is the app's route here."""
    if not isinstance(name, str) or not name.startswith("/"):
        raise Refused(f"{where}: option name {name!r} is not a URL path (it starts with /)")
    if not printable(name) or any(c in name for c in ' "\\#?'):
        raise Refused(f"{where}: option name {name!r} has characters a URL path cannot (space, quote, backslash, # or ?)")
    parts = [p for p in name.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise Refused(f"{where}: option name {name!r} has a . or .. segment")
    if not parts:
        raise Refused(
            f"{where}: option name {name!r} would serve the whole site from a directory; in the "
            "proxy-none bundle `/` is the app's route (serve files under a path such as /static)"
        )
    return "/" + "/".join(parts) + "/"


def directory(value, where):
    """The directory relative to the bundle's root, as nginx's `alias /var/app/current/VALUE`:
    `static`, `static/` and `./static` are one; `..` and absolute paths leave the bundle."""
    if not isinstance(value, str):
        raise Refused(f"{where}: value {value!r} is not a directory name")
    if not value.strip():
        raise Refused(f"{where}: the value is empty (a directory of the bundle, such as static)")
    if not printable(value):
        raise Refused(f"{where}: value {value!r} has control characters")
    if value.startswith("/"):
        raise Refused(
            f"{where}: {value!r} is an absolute path; the value is a directory relative to the "
            "application's root (as EB's nginx takes it), such as static"
        )
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused(f"{where}: {value!r} leaves the application's directory (..)")
    return "/".join(parts) or "."


def mappings(settings):
    """[(url path, directory, where)] in URL path order, the newer namespace winning."""
    found = {}
    for ns in NAMESPACES:
        options = settings.get(ns)
        if options is None:
            continue
        if not isinstance(options, dict):
            warn(f"{ns} is {type(options).__name__}, not an object: ignored")
            continue
        mine = {}
        for name, value in options.items():
            where = f"{ns}: {name}"
            path = url_path(name, where)
            d = directory(value, where)
            if path in mine and mine[path][0] != d:
                raise Refused(
                    f"{where} -> {d}: {path} is also {mine[path][1]} -> {mine[path][0]}; "
                    "one directory per path"
                )
            mine[path] = (d, where)
        found.update(mine)
    return [(p, d, w) for p, (d, w) in sorted(found.items())]


def quoted(s):
    """A YAML double-quoted scalar (JSON's string syntax is YAML's), with proxyd's `${`
    written `$${` so it is not read as an environment variable."""
    return json.dumps(s.replace("${", "$${"), ensure_ascii=False)


def block(routes, indent, config_dir):
    """The routes as YAML list items; a root is relative to the config file's directory."""
    lines = []
    for path, d, where in routes:
        root = os.path.relpath(d, config_dir) if config_dir else d
        lines += [
            f"{indent}# {where} -> {d}\n",
            f"{indent}- path: {quoted(path)}\n",
            f"{indent}  static:\n",
            f"{indent}    root: {quoted(root)}\n",
        ]
    return lines


def same_owner(path, st):
    """The hook runs as root; what it writes stays the bundle's owner's."""
    try:
        os.chown(path, st.st_uid, st.st_gid)
    except OSError:
        pass


def markers(config):
    """proxy.yaml's lines and where its two marker lines are, or None without markers."""
    with open(config, encoding="utf-8") as f:
        lines = f.readlines()
    begins = [i for i, l in enumerate(lines) if l.strip() == BEGIN]
    ends = [i for i, l in enumerate(lines) if l.strip() == END]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise Refused(
            f"{config}: expected one '{BEGIN}' line and, after it, one '{END}' line "
            f"(found {len(begins)} and {len(ends)})"
        )
    return lines, begins[0], ends[0]


def rewrite(config, found, routes, config_dir):
    """Replaces the lines between the markers (at the BEGIN line's indentation)."""
    lines, b, e = found
    indent = lines[b][: len(lines[b]) - len(lines[b].lstrip())]
    new = lines[: b + 1] + block(routes, indent, config_dir) + lines[e:]
    if new == lines:
        return
    # Beside it, then renamed over it, with its mode and owner: never half a file.
    fd, tmp = tempfile.mkstemp(prefix=".proxy.yaml.", dir=os.path.dirname(os.path.abspath(config)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(new)
        st = os.stat(config)
        os.chmod(tmp, st.st_mode & 0o7777)
        same_owner(tmp, st)
        os.replace(tmp, config)
    except BaseException:
        os.unlink(tmp)
        raise


def make_dirs(bundle, routes):
    """Each route's directory, created empty where the bundle has none."""
    for path, d, where in routes:
        full = os.path.join(bundle, d)
        if os.path.isdir(full):
            continue
        if os.path.lexists(full):
            raise Refused(f"{where}: {d} is in the bundle but is not a directory")
        # EB's nginx answers 404 under a path whose directory is missing; an empty one does
        # the same (and `proxyd check` wants a directory), and a later build step (Django's
        # collectstatic in container_commands) may fill it.
        try:
            os.makedirs(full)
        except OSError as e:
            raise Refused(f"{where}: cannot create {d}/ in the bundle: {e}")
        same_owner(full, os.stat(bundle))
        say(f"{d}/ is not in the bundle: created it empty ({path} answers 404, as nginx did)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--config", required=True, help="relative to --bundle")
    ap.add_argument("--get-config", required=True)
    args = ap.parse_args()
    config = os.path.join(args.bundle, args.config)

    settings = option_settings(args.get_config)
    try:
        routes = mappings(settings or {})
        if not os.path.isfile(config):
            raise Refused(f"{config} is missing")
        found = markers(config)
        if found is None:
            if routes:
                warn(
                    f"{config} has no '{BEGIN}' and '{END}' lines: the static files option is "
                    "not served by proxyd (those paths go to the app)"
                )
            return 0
        make_dirs(args.bundle, routes)
        rewrite(config, found, routes, os.path.dirname(os.path.normpath(args.config)))
    except Refused as e:
        print(f"{WHO}: {e}", file=sys.stderr)
        return 1
    for path, d, where in routes:
        say(f"{path} served from {d}/ ({where})")
    if not routes and settings is not None:
        say("no static files option: no static routes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
