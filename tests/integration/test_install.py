"""meson install into a temporary DESTDIR: every file a package needs, and the installed
header, library and pkg-config file build a client."""

import json
import os
import shutil
import subprocess

import pytest

from conftest import BUILD, ROOT

EXPECTED = [
    "usr/sbin/bearerd",
    "usr/bin/bearerctl",
    "usr/include/bearer.h",
    "usr/share/doc/bearerd/bearerd.conf",
    "usr/share/doc/bearerd/examples/vm-imds.conf",
    "usr/share/doc/bearerd/examples/proxy.conf",
    "usr/share/doc/bearerd/examples/aks-workload-identity.conf",
]
WITH_SYSTEMD = [
    "lib/systemd/system/bearerd.service",
    "lib/systemd/system/bearerd.socket",
    "usr/lib/sysusers.d/bearerd.conf",
    "usr/lib/tmpfiles.d/bearerd.conf",
]
MAN = [
    "usr/share/man/man8/bearerd.8",
    "usr/share/man/man1/bearerctl.1",
    "usr/share/man/man5/bearerd.conf.5",
]


def build_option(name):
    r = subprocess.run(["meson", "introspect", "--buildoptions", str(BUILD)],
                       capture_output=True, text=True, check=True)
    return next(o["value"] for o in json.loads(r.stdout) if o["name"] == name)


def installed(root):
    out = set()
    for d, _, files in os.walk(root):
        for f in files:
            out.add(os.path.relpath(os.path.join(d, f), root))
    return out


def test_install_into_destdir(tmp_path):
    dest = tmp_path / "dest"
    r = subprocess.run(["meson", "install", "-C", str(BUILD), "--destdir", str(dest),
                        "--no-rebuild", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    files = installed(dest)
    want = list(EXPECTED) + WITH_SYSTEMD
    if build_option("man") != "disabled":
        want += MAN
    missing = [f for f in want if f not in files]
    assert not missing, f"not installed: {missing}; installed: {sorted(files)}"
    libs = [f for f in files if os.path.basename(f).startswith("libbearer.so")]
    pcs = [f for f in files if f.endswith("pkgconfig/bearer.pc")]
    assert libs and len(pcs) == 1, sorted(files)
    assert os.access(dest / "usr/sbin/bearerd", os.X_OK)

    # a client built only from what was installed
    src = tmp_path / "client.c"
    src.write_text("#include <bearer.h>\n"
                   "int main(void) { struct bearer_token t;\n"
                   "  return bearer_get_token(\"/nonexistent.sock\", \"demo\", 0, &t) == 0; }\n")
    env = dict(os.environ, PKG_CONFIG_SYSROOT_DIR=str(dest),
               PKG_CONFIG_LIBDIR=str(dest / os.path.dirname(pcs[0])))
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "bearer"], capture_output=True,
                           text=True, env=env, check=True).stdout.split()
    libdir = str(dest / os.path.dirname(libs[0]))
    exe = tmp_path / "client"
    sanitize = build_option("b_sanitize")
    if sanitize != "none":  # a sanitized libbearer needs its runtime in the program too
        flags.append(f"-fsanitize={sanitize}")
    r = subprocess.run(["cc", str(src), "-o", str(exe), *flags, f"-Wl,-rpath,{libdir}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # it runs against the installed library and fails cleanly: no daemon on that socket
    assert subprocess.run([str(exe)], timeout=10).returncode == 0


def containerfile_runtime_packages():
    """The packages the runtime stage of deploy/Containerfile installs."""
    text = (BUILD.parent if (BUILD.parent / "deploy").exists() else ROOT).joinpath(
        "deploy", "Containerfile").read_text()
    runtime = text.split("bookworm-slim", 1)[1]
    block = runtime.split("apt-get install", 1)[1].split("&& rm", 1)[0]
    return [w for w in block.replace("\\", " ").split() if not w.startswith("-")]


def path_without(tmp_path, program):
    """A PATH with every program of this one but `program`: a machine where it is missing."""
    bindir = tmp_path / f"bin-without-{program}"
    bindir.mkdir()
    for d in os.environ.get("PATH", "").split(":"):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            target = os.path.join(d, name)
            if name != program and not (bindir / name).exists() and os.access(target, os.X_OK):
                (bindir / name).symlink_to(target)
    return str(bindir)


def installs_man_pages(builddir):
    """Whether the configured build dir installs bearerd(8), wherever its prefix is."""
    r = subprocess.run(["meson", "introspect", "--installed", str(builddir)],
                       capture_output=True, text=True, check=True)
    return any(p.endswith("/share/man/man8/bearerd.8") for p in json.loads(r.stdout).values())


def test_check_reconfigures_a_build_dir_made_before_scdoc(tmp_path):
    """scripts/demo sets up build/ with meson's defaults, on a fresh machine before
    scripts/check has installed scdoc; the check's build step (meson_dir in scripts/deps.sh)
    must then reconfigure that directory, not reuse it without man pages (issue 12, part 4:
    demo, then check, gave test_install_into_destdir "no man pages")."""
    if build_option("b_sanitize") != "none":
        return  # about the scripts, not this build: the plain run checks it
    if shutil.which("scdoc") is None:
        pytest.skip("scdoc is not installed (scripts/check installs it)")
    builddir = tmp_path / "build"
    # scripts/demo's setup, on a machine without scdoc
    env = dict(os.environ, PATH=path_without(tmp_path, "scdoc"))
    r = subprocess.run(["meson", "setup", str(builddir)], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not installs_man_pages(builddir), "the simulated machine without scdoc has it"
    # scdoc is installed now; scripts/check's build step
    check = ". scripts/deps.sh && meson_dir \"$0\" -Dman=enabled -Dsystemd=enabled -Dtests=enabled"
    r = subprocess.run(["bash", "-c", check, str(builddir)], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["ninja", "-C", str(builddir), "build.ninja"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert installs_man_pages(builddir), "build dir reused without the man pages"
    # and a second check changes nothing (no reconfigure, so a second run stays fast)
    r = subprocess.run(["bash", "-c", check, str(builddir)], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "reconfiguring" not in r.stderr, r.stderr


def test_container_runtime_has_every_shared_library():
    """Each library bearerd and bearerctl load comes from a package the slim runtime stage
    installs, or from one of their dependencies: a new dependency cannot be forgotten there."""
    if build_option("b_sanitize") != "none":
        return  # the sanitizer runtimes are not part of the image; the plain build checks it
    pkgs = containerfile_runtime_packages()
    deps = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends",
                           "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces",
                           "--no-enhances", *pkgs], capture_output=True, text=True, check=True)
    have = {line.strip() for line in deps.stdout.splitlines() if not line.startswith(" ")}
    missing = []
    for binary in ("daemon/bearerd", "client/bearerctl"):
        ldd = subprocess.run(["ldd", str(BUILD / binary)], capture_output=True, text=True,
                             check=True).stdout
        for line in ldd.splitlines():
            parts = line.split("=>")
            if len(parts) != 2 or not parts[1].strip().startswith("/"):
                continue
            path = parts[1].split()[0]
            if path.startswith(str(BUILD)):
                continue  # our own libbearer
            real = os.path.realpath(path)
            # merged /usr: dpkg knows each file by the name its package ships
            names = [path, real, real.removeprefix("/usr"), "/usr" + path]
            owner = None
            for name in names:
                owner = subprocess.run(["dpkg", "-S", name], capture_output=True, text=True)
                if owner.returncode == 0:
                    break
            assert owner.returncode == 0, f"no package owns {path}"
            pkg = owner.stdout.split(":", 1)[0]
            if pkg not in have:
                missing.append(f"{binary}: {path} ({pkg})")
    assert not missing, f"add to the runtime stage of deploy/Containerfile: {missing}"
