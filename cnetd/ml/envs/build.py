"""cnet-envbuild: builds one Python environment; run as a task of kind "env".

    <agent python> build.py --target DIR --python INTERPRETER --installer uv|pip [--uv PATH]
                            [--inherit] -- REQUIREMENT...

It runs as the build task's own unprivileged user, in its sandbox, with the agent's Python
environment (its interpreter runs this file, so `pip` and `uv` are the agent's). It makes a
venv in DIR (an empty directory the agent made for it) from INTERPRETER, and with
--inherit layers it over the agent's environment: a .pth file puts the agent's
site-packages after the venv's own, and a stub record of every distribution the agent has
(name and version only) tells the installer what is already there, so only what is missing
or pinned otherwise is installed. The stubs still standing afterwards are removed.

The package indexes are the operator's: the agent passes pip's effective configuration as
PIP_* variables (with PIP_CONFIG_FILE=/dev/null) and this maps them to uv's. The
requirements were checked by the agent (plain PEP 508 requirements, no option, URL or path)
and come after "--" all the same.

The last line printed is a JSON object (the task's result): on success the installer and
the time it took, on failure {"error": "..."} naming the package that was not found and
the indexes searched. The agent seals the directory (root's, read-only) afterwards; this
program never decides whether the environment is used.

Standard library only (it must run with any interpreter the agent has).
"""

from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import time
from importlib import metadata

STUB_INSTALLER = "cnet-inherit"
# Distributions that provide another's import package under their own name: the agent's
# tensorflow-cpu satisfies a requirement on "tensorflow" (tf-keras has one).
PROVIDES = {
    "tensorflow-cpu": ("tensorflow",),
    "tensorflow-gpu": ("tensorflow",),
    "tensorflow-intel": ("tensorflow",),
    "tensorflow-aarch64": ("tensorflow",),
}
NOT_FOUND = (
    re.compile(r"No matching distribution found for (\S+)"),  # pip
    re.compile(r"Because (\S+) was not found in the (?:package registry|provided package locations)"),  # uv
    re.compile(r"there (?:is|are) no versions? of (\S+?)(?: and|,|$)"),  # uv
    re.compile(r"(\S+) was not found in the (?:package registry|provided package locations)"),  # uv
)

FAILED_BUILD = re.compile(r"Failed to (?:build|download|prepare distributions for) `?([^`\s]+)")  # uv
CROSS = "\u00d7"  # the mark uv and pip put before an error
WORKING_ON = re.compile(r"(?:Collecting|Processing|Building wheel for|Downloading|Obtaining) (\S+)")  # pip


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def hide_password(url: str) -> str:
    return re.sub(r"://([^/@:]*):[^/@]*@", r"://\1:****@", url)


def indexes_searched(env: dict[str, str]) -> str:
    if env.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
        parts = ["no index"]
    else:
        parts = [f"index {hide_password(env.get('PIP_INDEX_URL') or 'https://pypi.org/simple')}"]
        extra = env.get("PIP_EXTRA_INDEX_URL", "").split()
        if extra:
            parts.append("extra indexes " + ", ".join(hide_password(u) for u in extra))
    links = env.get("PIP_FIND_LINKS", "").split()
    if links:
        parts.append("find-links " + ", ".join(hide_password(u) for u in links))
    return "; ".join(parts)


def uv_environment(env: dict[str, str], tmp: str) -> dict[str, str]:
    """pip's settings (as the agent passed them) in uv's words."""
    out = {k: v for k, v in env.items() if not k.startswith(("PIP_", "UV_"))}
    mapping = {"PIP_INDEX_URL": "UV_INDEX_URL", "PIP_EXTRA_INDEX_URL": "UV_EXTRA_INDEX_URL",
               "PIP_DEFAULT_TIMEOUT": "UV_HTTP_TIMEOUT", "PIP_TIMEOUT": "UV_HTTP_TIMEOUT"}
    for pip_name, uv_name in mapping.items():
        if env.get(pip_name):
            out[uv_name] = env[pip_name]
    if env.get("PIP_FIND_LINKS"):
        out["UV_FIND_LINKS"] = ",".join(env["PIP_FIND_LINKS"].split())
    if env.get("PIP_CONSTRAINT"):
        out["UV_CONSTRAINT"] = " ".join(env["PIP_CONSTRAINT"].split())
    if env.get("PIP_TRUSTED_HOST"):
        out["UV_INSECURE_HOST"] = " ".join(env["PIP_TRUSTED_HOST"].split())
    if env.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
        out["UV_NO_INDEX"] = "1"
    if env.get("PIP_CERT"):
        out["SSL_CERT_FILE"] = env["PIP_CERT"]
    out.update({
        "UV_NO_CONFIG": "1",  # the operator's settings come from the agent, not a file here
        "UV_INDEX_STRATEGY": "unsafe-best-match",  # as pip: the best version over every index
        "UV_CACHE_DIR": os.path.join(tmp, "uv-cache"),
        "UV_LINK_MODE": "copy",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    })
    return out


def site_packages(target: str) -> str:
    out = subprocess.run(
        [os.path.join(target, "bin", "python"), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def write_stubs(site_dir: str) -> int:
    """A record (name and version only) of each distribution the agent has, so that the
    installer counts it as installed. A pin the stub does not meet makes the installer
    replace the stub with the real thing inside the venv, which then shadows the agent's."""
    written = 0
    seen: set[str] = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if not name:
            continue
        for provided in (normalise(name), *PROVIDES.get(normalise(name), ())):
            if provided in seen:
                continue
            seen.add(provided)
            directory = os.path.join(site_dir, f"{provided.replace('-', '_')}-{dist.version}.dist-info")
            os.makedirs(directory, exist_ok=True)
            files = {"METADATA": f"Metadata-Version: 2.1\nName: {provided}\nVersion: {dist.version}\n",
                     "INSTALLER": STUB_INSTALLER + "\n"}
            for file_name, text in files.items():
                with open(os.path.join(directory, file_name), "w") as f:
                    f.write(text)
            base = os.path.basename(directory)
            with open(os.path.join(directory, "RECORD"), "w") as f:
                f.writelines(f"{base}/{n},,\n" for n in (*files, "RECORD"))
            written += 1
    return written


def remove_stubs(site_dir: str) -> None:
    import shutil

    for entry in os.listdir(site_dir):
        if not entry.endswith(".dist-info"):
            continue
        try:
            with open(os.path.join(site_dir, entry, "INSTALLER")) as f:
                if f.read().strip() != STUB_INSTALLER:
                    continue
        except OSError:
            continue
        shutil.rmtree(os.path.join(site_dir, entry))


def run_installer(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run it with its output going to this task's log as it comes; returns the exit code
    and the output (for the reason of a failure)."""
    try:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except OSError as exc:
        return 127, f"ERROR: cannot run the installer {argv[0]}: {exc.strerror}"
    assert proc.stdout is not None
    seen: list[str] = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        sys.stdout.write(line)
        sys.stdout.flush()
        seen.append(line)
        del seen[:-400]
    return proc.wait(), "".join(seen)


def failure_reason(output: str, env: dict[str, str]) -> str:
    for pattern in NOT_FOUND:
        match = pattern.search(output)
        if match:
            return f"package {match.group(1).rstrip('.,')!r} was not found ({indexes_searched(env)})"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    failed = [m.group(1) for m in map(FAILED_BUILD.search, lines) if m]
    working_on = [m.group(1) for m in map(WORKING_ON.match, lines) if m]
    errors = [line for line in lines if line.startswith(("ERROR", "error:", CROSS)) or "Error" in line]
    why = (errors or lines or ["the installer failed without output"])[-1].lstrip(CROSS + " ")[:800]
    package = (failed or working_on or [None])[-1]
    return f"{package}: {why}" if package and package not in why else why


def parse(args: list[str]) -> tuple[dict[str, str], bool, list[str]]:
    if "--" not in args:
        raise SystemExit("usage: build.py --target DIR --python PY --installer uv|pip [--uv PATH] [--inherit] -- REQ...")
    split = args.index("--")
    options, requirements = args[:split], args[split + 1:]
    values: dict[str, str] = {}
    inherit = False
    i = 0
    while i < len(options):
        if options[i] == "--inherit":
            inherit = True
            i += 1
        else:
            values[options[i].lstrip("-")] = options[i + 1]
            i += 2
    return values, inherit, requirements


def main(args: list[str]) -> int:
    options, inherit, requirements = parse(args)
    target, python, installer = options["target"], options["python"], options["installer"]
    started = time.monotonic()
    env = dict(os.environ)
    emit(progress=0.05, step="venv", target=target, python=python, installer=installer)
    try:
        subprocess.run([python, "-m", "venv", "--without-pip", target], check=True, stdin=subprocess.DEVNULL)
        site_dir = site_packages(target)
    except (OSError, subprocess.CalledProcessError) as exc:
        emit(error=f"{python} -m venv {target} failed: {exc}", installer=installer)
        return 1
    stubs = 0
    if inherit:
        with open(os.path.join(site_dir, "_cnet_inherit.pth"), "w") as f:
            f.writelines(p + "\n" for p in site.getsitepackages())
        stubs = write_stubs(site_dir)
    emit(progress=0.2, step="install", requirements=requirements, inherited=stubs)
    target_python = os.path.join(target, "bin", "python")
    if installer == "uv":
        argv = [options["uv"], "pip", "install", "--python", target_python, "--", *requirements]
        code, output = run_installer(argv, uv_environment(env, env.get("TMPDIR", "/tmp")))
    else:
        argv = [sys.executable, "-m", "pip", "--python", target_python, "install", "--no-input",
                "--disable-pip-version-check", "--no-warn-script-location", "--", *requirements]
        code, output = run_installer(argv, env)
    if code != 0:
        emit(error=failure_reason(output, env), installer=installer, exit_code=code)
        return 1
    if inherit:
        remove_stubs(site_dir)
    emit(progress=1.0, step="done", installer=installer, seconds=round(time.monotonic() - started, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
