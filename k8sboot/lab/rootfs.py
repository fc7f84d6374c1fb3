"""The lab's Debian root: debootstrapped once into a cache keyed by the recipe's hash.

`ensure_rootfs` returns the directory of a finished root for the current recipe
(`/var/lib/k8sboot/rootfs/bookworm-<hash>`), building it first when it is missing: debootstrap
(minbase + the recipe's packages, with a package cache under /var/cache/k8sboot), then the
recipe's customisation (sshd drop-in, empty machine-id and resolv.conf, no baked host keys,
masked units, haproxy and nginx installed but disabled, and the stand-in's CEL library copied
from this machine's venv into plan.STANDIN_DEPS: see copy_vendored). A root is complete only when its ready mark (the recipe JSON) exists; it is built
under `<dir>.tmp` and renamed into place, so a killed build leaves nothing that looks usable.
Roots of older recipes are removed once no host uses them. Nothing per-host goes in here: host
keys, hostname, the kube-apiserver stand-in and what a role turns on (haproxy on lb-0) are written
into each host's overlay at boot.

The mirror comes from this machine's apt sources, or from `--mirror`; none is written here.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from k8sboot.errors import LabError
from k8sboot.lab import plan
from k8sboot.lab.plan import RootfsRecipe

APT_DEB822 = Path("/etc/apt/sources.list.d/debian.sources")
APT_SOURCES_LIST = Path("/etc/apt/sources.list")

# report(step_text, steps_done): called for each line debootstrap prints and for our own steps
Reporter = Callable[[str, int], None]


def find_apt_mirror() -> str | None:
    def read(p: Path) -> str | None:
        try:
            return p.read_text(errors="replace")
        except OSError:
            return None

    return plan.parse_apt_mirror(read(APT_DEB822), read(APT_SOURCES_LIST))


def resolve_mirror(mirror: str | None) -> str:
    if mirror:
        why = plan.check_mirror_url(mirror)
        if why:
            raise LabError(f"building the lab's Debian root: {why}",
                           hint="pass --mirror with the URL of a Debian mirror, e.g. the one in "
                                "/etc/apt/sources.list.d/debian.sources")
        return mirror
    found = find_apt_mirror()
    if not found:
        raise LabError("building the lab's Debian root: no Debian mirror in this machine's apt sources "
                       f"({APT_DEB822}, {APT_SOURCES_LIST})",
                       hint="pass --mirror URL (a Debian mirror that serves bookworm)")
    return found


def vendored_package_dir(dist: str = plan.CEL_DIST, package: str = plan.CEL_PACKAGE) -> tuple[str, Path]:
    """(version, directory) of a Python package installed beside k8sboot (the venv), found
    without importing it. LabError (one line, with the fix) when it is not installed."""
    import importlib.metadata
    import importlib.util

    try:
        version = importlib.metadata.version(dist)
        spec = importlib.util.find_spec(package)
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LabError(f"the lab's kube-apiserver stand-in needs the Python package {dist}, which is not "
                       "installed beside k8sboot", hint=f"`make deps` (or: pip install {dist})")
    return version, Path(list(spec.submodule_search_locations)[0])


def current_recipe() -> RootfsRecipe:
    """The recipe with the installed versions of the packages copied into the root: a new
    cel-expr-python makes a new root."""
    version, _ = vendored_package_dir()
    return RootfsRecipe(vendored=((plan.CEL_DIST, version),))


def find_rootfs(recipe: RootfsRecipe | None = None, base: Path = plan.ROOTFS_DIR) -> Path | None:
    """The finished root for `recipe` (default: current_recipe()), or None."""
    recipe = recipe or current_recipe()
    d = recipe.directory(base)
    return d if (d / plan.READY_MARK).is_file() else None


def ensure_rootfs(mirror: str | None = None, report: Reporter | None = None,
                  recipe: RootfsRecipe | None = None, base: Path = plan.ROOTFS_DIR,
                  cache_dir: Path = plan.DEBOOTSTRAP_CACHE) -> tuple[Path, bool]:
    """(root directory, built now?). Builds at most once per recipe, under a lock."""
    recipe = recipe or current_recipe()
    done = find_rootfs(recipe, base)
    if done:
        return done, False
    base.mkdir(parents=True, exist_ok=True, mode=0o755)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # a parallel `lab up` waits for our build
        done = find_rootfs(recipe, base)
        if done:
            return done, False
        mirror = resolve_mirror(mirror)
        target = recipe.directory(base)
        _build(recipe, target, mirror, cache_dir, report or (lambda text, n: None))
        prune_rootfs(keep=target, base=base)
        return target, True


def _build(recipe: RootfsRecipe, target: Path, mirror: str, cache_dir: Path, report: Reporter) -> None:
    tmp = target.with_name(target.name + ".tmp")
    remove_tree(tmp)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    log_path = target.with_name(target.name + ".log")
    argv = plan.build_debootstrap_argv(recipe, tmp, mirror, cache_dir)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C",
           "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    for k in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if k in os.environ:
            env[k] = os.environ[k]
    steps = 0
    t0 = time.monotonic()
    report(f"debootstrap {recipe.suite} from {mirror}", steps)
    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                line = line.strip()
                if line.startswith(("I: ", "W: ", "E: ")):
                    steps += 1
                    report(line[3:], steps)
            rc = proc.wait()
    except FileNotFoundError as exc:
        raise LabError("building the lab's Debian root: debootstrap is not installed",
                       hint="apt-get install debootstrap") from exc
    except OSError as exc:
        raise LabError(f"building the lab's Debian root: {exc}") from exc
    if rc != 0:
        tail = _tail(log_path)
        _unmount_under(tmp)
        inner = tmp / "debootstrap" / "debootstrap.log"
        raise LabError(f"building the lab's Debian root: debootstrap exited {rc}: {tail}",
                       hint=f"logs: {log_path}" + (f" and {inner}" if inner.exists() else "")
                       + f"; check the mirror ({mirror}) or pass --mirror")
    report("customising the root", steps + 1)
    customise_root(tmp, recipe)
    (tmp / plan.READY_MARK).write_text(recipe.to_json() + "\n")
    os.rename(tmp, target)
    report(f"root ready in {time.monotonic() - t0:.0f} s: {target}", steps + 2)


def customise_root(root: Path, recipe: RootfsRecipe) -> None:
    """The recipe's one-time changes to a freshly debootstrapped tree."""
    for pattern in recipe.remove_globs:
        for p in glob.glob(str(root) + pattern):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
    for path, mode, content in recipe.files:
        dest = Path(str(root) + path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_symlink():
            dest.unlink()
        dest.write_text(content)
        os.chmod(dest, mode)
    (root / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
    os.chmod(root / "root/.ssh", 0o700)
    # systemctl works offline on a tree: it only writes symlinks
    for verb, units in (("mask", recipe.mask), ("disable", recipe.disable), ("enable", recipe.enable)):
        if units:
            r = subprocess.run(["systemctl", f"--root={root}", verb, *units],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise LabError(f"customising the lab's root: systemctl {verb} failed: "
                               f"{(r.stderr or r.stdout).strip()}")
    for dist, version in recipe.vendored:
        copy_vendored(root, dist, version)


# what of each vendored distribution goes into the root: (package, globs, required globs)
VENDORED = {plan.CEL_DIST: (plan.CEL_PACKAGE, plan.CEL_FILES, plan.CEL_REQUIRED)}


def copy_vendored(root: Path, dist: str, version: str, source: Path | None = None) -> list[str]:
    """Copy the files of `dist` the stand-in needs (VENDORED) from the installed package into
    `root` + plan.STANDIN_DEPS; returns their paths under it. The installed version must be the
    recipe's, and its extension modules must be for the root's Python (the venv's and the lab's
    Debian python3 are both CPython 3.11)."""
    import fnmatch

    package, globs, required = VENDORED[dist]
    installed, pkg_dir = vendored_package_dir(dist, package)
    source = source or pkg_dir
    if installed != version:
        raise LabError(f"building the lab's Debian root: {dist} {installed} is installed, the recipe "
                       f"names {version}", hint="run the command again")
    files = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    chosen = [f for f in files if any(fnmatch.fnmatchcase(f, g) for g in globs)]
    missing = [g for g in required if not any(fnmatch.fnmatchcase(f, g) for f in chosen)]
    if missing:
        raise LabError(f"building the lab's Debian root: {dist} in {source} has no {', '.join(missing)}",
                       hint=f"reinstall it: `make deps` (or: pip install --force-reinstall {dist})")
    pythons = {p.name.replace("python", "").replace(".", "") for p in (root / "usr/lib").glob("python3.*")
               if (p / "os.py").exists()}
    for f in chosen:
        tags = [t for t in (f"cpython-{v}-" for v in pythons) if t in f]
        if f.endswith(".so") and not tags:
            raise LabError(f"building the lab's Debian root: {dist}'s {f} is not for the root's Python "
                           f"(python3 {', '.join(sorted(pythons)) or 'not found'})",
                           hint="the venv must use CPython 3.11, as Debian bookworm does (`make clean deps`)")
    dest = Path(str(root) + plan.STANDIN_DEPS) / package
    for f in chosen:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(target.parent, 0o755)
        shutil.copyfile(source / f, target)
        os.chmod(target, 0o644)
    return [f"{package}/{f}" for f in chosen]


def prune_rootfs(keep: Path, base: Path = plan.ROOTFS_DIR) -> list[Path]:
    """Remove roots of older recipes that no overlay uses; returns what was removed."""
    in_use = _overlay_lowers()
    removed = []
    for d in base.iterdir():
        if d.is_file() and d.suffix == ".log" and d.name != keep.name + ".log":
            d.unlink(missing_ok=True)          # the build log of an older recipe
            continue
        if d == keep or not d.is_dir() or d.name.startswith("."):
            continue
        if any(str(d) == lower or lower.startswith(str(d) + "/") for lower in in_use):
            continue
        if d.name.endswith(".tmp") or (d / plan.READY_MARK).exists():
            remove_tree(d)
            removed.append(d)
    return removed


def _overlay_lowers() -> set[str]:
    lowers = set()
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if " - overlay " in line:
                    for opt in line.rsplit(" ", 1)[-1].strip().split(","):
                        if opt.startswith("lowerdir="):
                            lowers.update(opt[len("lowerdir="):].split(":"))
    except OSError:
        pass
    return lowers


def _unmount_under(path: Path) -> None:
    """A killed debootstrap can leave /proc and /sys mounted in its target: unmount them first."""
    prefix = str(path) + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp.startswith(prefix):
                points.append(mp)
    for mp in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def remove_tree(path: Path) -> None:
    """rm -rf that never crosses into a mount (a half-built debootstrap tree may hold /proc)."""
    if not path.exists():
        return
    _unmount_under(path)
    r = subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        raise LabError(f"removing {path}: {r.stderr.strip()}")


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])
