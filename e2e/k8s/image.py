#!/usr/bin/env python3
"""Builds the Fjord container image without a registry, from binaries compiled on the host.

    python3 e2e/k8s/image.py build --profile debug|release --tag localhost/fjord:dev --out FILE
    python3 e2e/k8s/image.py check      # the Dockerfile and this script describe the same image
    python3 e2e/k8s/image.py selftest [--out FILE]

`build` writes a docker archive (what `docker save` writes: manifest.json, the config JSON
and one uncompressed layer tar), which `ctr -n k8s.io images import FILE` and
`docker load -i FILE` both take. No base image is pulled and nothing is downloaded: the
layer holds target/<profile>/fjord-broker, fjord-operator and fjord-verifiable, the host's kcat and CA
bundle, the shared libraries these programs load (found with ldd, at the same paths as on
the host), /etc/passwd and /etc/group with the fjord user, /var/lib/fjord and /tmp.

The Dockerfile's last stage stays the description of the image: USER, EXPOSE, VOLUME, ENV,
WORKDIR, LABEL, ENTRYPOINT and CMD are read from it, and `check` (which `build` runs first)
fails when a RUN or COPY there would make the layout differ from what this script builds.

Python 3 standard library only. The output is deterministic: two builds from the same
binaries give the same bytes (fixed mtimes, sorted entries, explicit owners).
"""

import argparse
import dataclasses
import datetime
import hashlib
import io
import json
import os
import posixpath
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKERFILE = os.path.join(REPO, "Dockerfile")

# ------------------------------------------------------------ what this script puts in the image
# Each constant below mirrors a line of the Dockerfile's last stage; `check` compares them.

# COPY --from=build .../<name> <path>: the Rust binaries, by image path.
BINARIES = {
    "/usr/local/bin/fjord-broker": "fjord-broker",
    "/usr/local/bin/fjord-operator": "fjord-operator",
    "/usr/local/bin/fjord-verifiable": "fjord-verifiable",
}
# useradd --system --uid 10001 --user-group --home-dir /var/lib/fjord fjord
USER_NAME = "fjord"
UID = GID = 10001
HOME = "/var/lib/fjord"
# install -d -o fjord -g fjord <dir>: directories the fjord user owns (mode 0755).
OWNED_DIRS = ["/var/lib/fjord"]
# apt-get install <package>: the host file that stands in for each package. A package the
# Dockerfile installs that is not here would be missing from the image, hence the check.
PACKAGES = {
    "ca-certificates": "/etc/ssl/certs/ca-certificates.crt",
    "kcat": "/usr/bin/kcat",
}
# Host files the image cannot do without (the CA bundle is only copied when present).
REQUIRED_HOST_FILES = {"/usr/bin/kcat": "apt-get install kcat"}
# Shell commands of RUN that change nothing in the final image (apt bookkeeping).
NO_OP_COMMANDS = [["apt-get", "update"], ["apt-get", "clean"], ["rm", "-rf", "/var/lib/apt/lists/*"]]
# The instructions the last stage may use; anything else (ADD, ARG, SHELL, HEALTHCHECK...)
# is something this script does not reproduce, so it fails the check.
KNOWN_INSTRUCTIONS = {"FROM", "RUN", "COPY", "USER", "EXPOSE", "VOLUME", "ENTRYPOINT", "CMD",
                      "ENV", "WORKDIR", "LABEL"}
# The PATH debian:bookworm-slim sets; ENV in the Dockerfile may add to or override it.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"{USER_NAME}:x:{UID}:{GID}::{HOME}:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\n{USER_NAME}:x:{GID}:\n"
# glibc reads users and hosts from files first (its built-in nss modules since 2.34).
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"


class Failure(Exception):
    """An error with a message for the user (no traceback)."""


# ------------------------------------------------------------------------ Dockerfile parsing
def dockerfile_instructions(text):
    """(KEYWORD, arguments) for each instruction, continuation lines joined.

    As Docker does: a trailing backslash continues the instruction on the next line, and
    comment or empty lines inside a continued instruction are dropped."""
    instructions, pending = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending = (pending or "") + line[:-1] + " "
            continue
        whole = ((pending or "") + line).strip()
        pending = None
        keyword, _, args = whole.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    if pending is not None:
        keyword, _, args = pending.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def json_array(args):
    """The JSON-array form of ENTRYPOINT/CMD/VOLUME..., or None for the shell form."""
    if not args.startswith("["):
        return None
    value = json.loads(args)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not a JSON array of strings: {args}")
    return value


def shell_commands(script):
    """A RUN shell script as a list of commands (word lists), split at && and ;.

    Only plain command sequences are understood: pipes, ||, redirections or subshells
    make the effect on the image something this script cannot tell, so they are refused."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, words = [], []
    for token in lexer:
        if token in ("&&", ";"):
            if words:
                commands.append(words)
            words = []
        elif token and all(c in "();<>|&" for c in token):
            raise ValueError(f"unsupported shell syntax {token!r} in RUN {script!r}")
        else:
            words.append(token)
    if words:
        commands.append(words)
    return commands


def parse_options(words, with_value, flags):
    """getopt for useradd/install: ({option: value}, [operands]); unknown options raise."""
    options, operands, i = {}, [], 0
    while i < len(words):
        word = words[i]
        name, eq, value = word.partition("=")
        if word.startswith("-") and eq and name in with_value:
            options[name] = value
        elif word in with_value:
            if i + 1 >= len(words):
                raise ValueError(f"{word} needs a value")
            options[word] = words[i + 1]
            i += 1
        elif word in flags:
            options[word] = True
        elif word.startswith("-"):
            raise ValueError(f"unknown option {word}")
        else:
            operands.append(word)
        i += 1
    return options, operands


@dataclasses.dataclass
class Stage:
    """What the Dockerfile's last stage says about the image."""
    base: str = ""
    user: str = None
    expose: list = dataclasses.field(default_factory=list)
    volumes: list = dataclasses.field(default_factory=list)
    entrypoint: list = None
    cmd: list = None
    env: list = dataclasses.field(default_factory=list)  # "KEY=value", in order
    workdir: str = None
    labels: dict = dataclasses.field(default_factory=dict)
    copies: list = dataclasses.field(default_factory=list)  # (source, destination)
    packages: list = dataclasses.field(default_factory=list)
    users: list = dataclasses.field(default_factory=list)  # (name, uid, gid, home)
    owned_dirs: list = dataclasses.field(default_factory=list)  # (path, owner, group, mode)
    problems: list = dataclasses.field(default_factory=list)


def key_values(args, keyword):
    """ENV/LABEL arguments as (key, value) pairs: `K=V K2="V 2"` or the legacy `K V`."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return [(words[0], args.split(None, 1)[1] if len(words) > 1 else "")]
    pairs = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise ValueError(f"{keyword} {args}: expected KEY=value")
        pairs.append((key, value))
    return pairs


def parse_run(stage, script):
    """Records what each command of a RUN does to the image; anything unknown is a problem."""
    for words in shell_commands(script):
        if words in NO_OP_COMMANDS:
            continue
        if words[:2] == ["apt-get", "install"]:
            stage.packages += [w for w in words[2:] if not w.startswith("-")]
        elif words[0] == "useradd":
            options, operands = parse_options(
                words[1:],
                with_value={"--uid", "-u", "--gid", "-g", "--home-dir", "-d", "--shell", "-s"},
                flags={"--system", "-r", "--user-group", "-U", "--no-create-home", "-M",
                       "--no-log-init", "-l"})
            if len(operands) != 1:
                raise ValueError(f"useradd: expected one user name in {' '.join(words)}")
            uid = options.get("--uid", options.get("-u"))
            # --user-group makes a group of the same name; useradd gives it the uid as gid.
            gid = options.get("--gid", options.get("-g"))
            if gid is None and (options.get("--user-group") or options.get("-U")):
                gid = uid
            home = options.get("--home-dir", options.get("-d"))
            stage.users.append((operands[0], uid, gid, home))
        elif words[0] == "install" and ("-d" in words or "--directory" in words):
            options, operands = parse_options(
                words[1:],
                with_value={"-o", "--owner", "-g", "--group", "-m", "--mode"},
                flags={"-d", "--directory"})
            owner = options.get("-o", options.get("--owner", "root"))
            group = options.get("-g", options.get("--group", "root"))
            mode = options.get("-m", options.get("--mode", "755"))
            stage.owned_dirs += [(path, owner, group, mode) for path in operands]
        else:
            stage.problems.append(f"RUN: unknown command `{' '.join(words)}`: image.py does not "
                                  "reproduce it; teach e2e/k8s/image.py what it adds")


def parse_last_stage(text):
    """The Dockerfile's last stage (the runtime image) as a Stage."""
    instructions = dockerfile_instructions(text)
    froms = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    if not froms:
        raise Failure("Dockerfile: no FROM instruction")
    stage = Stage(base=instructions[froms[-1]][1].split()[0])
    for keyword, args in instructions[froms[-1] + 1:]:
        try:
            if keyword not in KNOWN_INSTRUCTIONS:
                stage.problems.append(f"{keyword} {args}: instruction not supported by image.py")
            elif keyword == "RUN":
                exec_form = json_array(args)
                if exec_form is not None:
                    parse_run(stage, shlex.join(exec_form))
                else:
                    parse_run(stage, args)
            elif keyword == "COPY":
                words = json_array(args) or shlex.split(args)
                flags = [w for w in words if w.startswith("--")]
                paths = [w for w in words if not w.startswith("--")]
                # Only binaries from the build stage: a file from the build context, or
                # --chown/--chmod, would be a layout image.py does not know about.
                if flags != ["--from=build"] or len(paths) != 2:
                    stage.problems.append(f"COPY {args}: image.py only reproduces "
                                          "`COPY --from=build <binary> <path>`")
                else:
                    stage.copies.append((paths[0], paths[1]))
            elif keyword == "USER":
                stage.user = args
            elif keyword == "EXPOSE":
                stage.expose += args.split()
            elif keyword == "VOLUME":
                stage.volumes += json_array(args) or args.split()
            elif keyword in ("ENTRYPOINT", "CMD"):
                # The shell form runs /bin/sh -c, and the image has no shell.
                value = json_array(args)
                if value is None:
                    stage.problems.append(f"{keyword} {args}: use the JSON-array form "
                                          "(the image has no /bin/sh)")
                elif keyword == "ENTRYPOINT":
                    stage.entrypoint = value
                else:
                    stage.cmd = value
            elif keyword == "ENV":
                stage.env += [f"{k}={v}" for k, v in key_values(args, keyword)]
            elif keyword == "LABEL":
                stage.labels.update(key_values(args, keyword))
            elif keyword == "WORKDIR":
                if not args.startswith("/"):
                    stage.problems.append(f"WORKDIR {args}: must be absolute")
                stage.workdir = args
        except ValueError as err:
            stage.problems.append(f"{keyword} {args}: {err}")
    return stage


def read_stage():
    with open(DOCKERFILE, encoding="utf-8") as f:
        return parse_last_stage(f.read())


def drift(stage):
    """Where the Dockerfile's last stage and this script disagree, as messages."""
    problems = list(stage.problems)
    copied = {}
    for source, dest in stage.copies:
        if dest not in BINARIES:
            problems.append(f"COPY {source} {dest}: image.py puts no binary at {dest}")
        elif posixpath.basename(source) != BINARIES[dest]:
            problems.append(f"COPY {source} {dest}: image.py puts {BINARIES[dest]} there")
        copied[dest] = source
    for dest in BINARIES:
        if dest not in copied:
            problems.append(f"image.py puts {BINARIES[dest]} at {dest}, the Dockerfile copies "
                            "nothing there")

    expected_user = (USER_NAME, str(UID), str(GID), HOME)
    if [tuple(u) for u in stage.users] != [expected_user]:
        problems.append(f"useradd: the Dockerfile creates {stage.users or 'no user'}, image.py "
                        f"writes /etc/passwd with (name, uid, gid, home) = {expected_user}")
    if stage.user not in (str(UID), USER_NAME):
        problems.append(f"USER {stage.user}: image.py sets up user {USER_NAME} ({UID})")

    owners = {USER_NAME, str(UID)}
    dirs = sorted(d[0] for d in stage.owned_dirs)
    if dirs != sorted(OWNED_DIRS):
        problems.append(f"install -d: the Dockerfile makes {dirs}, image.py makes {OWNED_DIRS}")
    for path, owner, group, mode in stage.owned_dirs:
        if owner not in owners or group not in owners or mode.lstrip("0") != "755":
            problems.append(f"install -d {path}: image.py makes it {USER_NAME}:{USER_NAME} 0755, "
                            f"the Dockerfile {owner}:{group} {mode}")

    for package in stage.packages:
        if package not in PACKAGES:
            problems.append(f"apt-get install {package}: image.py does not know what this package "
                            "puts in the image; map it in PACKAGES")
    for package in PACKAGES:
        if package not in stage.packages:
            problems.append(f"image.py adds {PACKAGES[package]} for {package}, which the "
                            "Dockerfile does not install")

    # A volume must be a directory of the image (not an accidental empty one made by Docker).
    for volume in stage.volumes:
        if volume not in OWNED_DIRS:
            problems.append(f"VOLUME {volume}: not a directory image.py makes")
    if stage.entrypoint and stage.entrypoint[0] not in BINARIES:
        problems.append(f"ENTRYPOINT {stage.entrypoint[0]}: not a binary image.py puts in the image")
    return problems


def check():
    stage = read_stage()
    problems = drift(stage)
    if problems:
        raise Failure("the Dockerfile's last stage and e2e/k8s/image.py describe different "
                      "images:\n  " + "\n  ".join(problems))
    return stage


# ------------------------------------------------------------------------------ the layer
def source_date_epoch():
    """The mtime of every entry: SOURCE_DATE_EPOCH if set (reproducible-builds convention), else 0."""
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


@dataclasses.dataclass
class Entry:
    kind: bytes  # tarfile.REGTYPE, DIRTYPE or SYMTYPE
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    source: str = None  # regular file: a host path
    data: bytes = None  # regular file: contents
    target: str = None  # symlink


class Layer:
    """The files of the image, by absolute path; written as one deterministic tar."""

    def __init__(self):
        self.entries = {}

    def put(self, path, entry):
        path = posixpath.normpath(path)
        old = self.entries.get(path)
        if old is not None and old != entry:
            raise Failure(f"{path} added twice, differently: {old} and {entry}")
        self.entries[path] = entry

    def dir(self, path, mode=0o755, uid=0, gid=0):
        self.put(path, Entry(tarfile.DIRTYPE, mode, uid, gid))

    def file(self, path, source=None, data=None, mode=0o644):
        self.put(path, Entry(tarfile.REGTYPE, mode, source=source, data=data))

    def host(self, path):
        """Copies the host's `path` to the same path in the image.

        Symlinks on the way become symlinks in the image and what they point to is copied
        as well: the file itself (libzstd.so.1 -> libzstd.so.1.5.4), or a parent directory
        (on merged-/usr hosts /lib -> usr/lib and /lib64 -> usr/lib64, so the loader's
        /lib64/ld-linux-x86-64.so.2 is a link into /usr/lib64, which links on into
        /lib/x86_64-linux-gnu). The loader then finds every library under the name the
        binary was linked with, as on the host. This is realpath(), recording the links."""
        resolved, todo, links = [], [c for c in path.split("/") if c], 0
        while todo:
            name = todo.pop(0)
            if name == ".":
                continue
            if name == "..":  # `resolved` holds no symlinks, so .. is just the parent
                if resolved:
                    resolved.pop()
                continue
            current = "/" + "/".join(resolved + [name])
            st = os.lstat(current)
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > 40:
                    raise Failure(f"{path}: too many levels of symbolic links")
                target = os.readlink(current)
                self.put(current, Entry(tarfile.SYMTYPE, 0o777, target=target))
                todo = [c for c in target.split("/") if c] + todo
                if target.startswith("/"):
                    resolved = []
            elif todo:
                resolved.append(name)  # a real directory: created with the default mode
            elif stat.S_ISREG(st.st_mode):
                self.file(current, source=current, mode=stat.S_IMODE(st.st_mode))
            else:
                raise Failure(f"{current}: neither a file nor a symlink")

    def write(self, fileobj, mtime):
        """The layer tar: parent directories added, entries sorted, owners explicit."""
        entries = dict(self.entries)
        for path in list(entries):
            parent = posixpath.dirname(path)
            while parent != "/":
                existing = entries.get(parent)
                if existing is None:
                    entries[parent] = Entry(tarfile.DIRTYPE)
                elif existing.kind != tarfile.DIRTYPE:
                    raise Failure(f"{path}: its parent {parent} is not a directory in the image")
                parent = posixpath.dirname(parent)
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            # Sorting by components puts every directory before its contents.
            for path in sorted(entries, key=lambda p: p.split("/")):
                e = entries[path]
                info = tarfile.TarInfo(path.lstrip("/"))
                info.type, info.mode, info.mtime = e.kind, e.mode, mtime
                info.uid, info.gid = e.uid, e.gid
                info.uname = info.gname = ""
                if e.kind == tarfile.SYMTYPE:
                    info.linkname = e.target
                    tar.addfile(info)
                elif e.kind == tarfile.DIRTYPE:
                    tar.addfile(info)
                elif e.data is not None:
                    info.size = len(e.data)
                    tar.addfile(info, io.BytesIO(e.data))
                else:
                    info.size = os.path.getsize(e.source)
                    with open(e.source, "rb") as f:
                        tar.addfile(info, f)


def elf_interpreter(path):
    """The PT_INTERP of an x86-64 ELF file (its dynamic loader), or None if static."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF":
            raise Failure(f"{path}: not an ELF file")
        ei_class, ei_data = header[4], header[5]
        (machine,) = struct.unpack_from("<H", header, 18)
        # The image config says amd64: a binary for another machine would not run in it.
        if ei_class != 2 or ei_data != 1 or machine != 62:
            raise Failure(f"{path}: not an x86-64 (amd64) ELF binary")
        phoff, = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack("<IIQQQQ", f.read(40))
            if p_type == 3:  # PT_INTERP
                f.seek(p_offset)
                return f.read(p_filesz).rstrip(b"\0").decode()
    return None


def shared_libraries(binary):
    """The absolute paths ldd resolves for `binary` (the loader included)."""
    result = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if result.returncode != 0:
        if "not a dynamic executable" in result.stdout + result.stderr:
            return []
        raise Failure(f"ldd {binary} failed: {result.stderr.strip() or result.stdout.strip()}")
    paths = []
    for line in result.stdout.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)",
        # "linux-vdso.so.1 (0x...)" (in the kernel, nothing to copy) or "libfoo.so => not found".
        if "not found" in line:
            raise Failure(f"ldd {binary}: {line.strip()}")
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            paths.append(path)
    return paths


def stripped(binary, tmpdir):
    """A copy of `binary` without debug info (debug builds are mostly DWARF), if a tool exists."""
    out = os.path.join(tmpdir, os.path.basename(binary))
    if shutil.which("strip"):
        command = ["strip", "--strip-debug", "-o", out, binary]
    elif shutil.which("objcopy"):
        command = ["objcopy", "--strip-debug", binary, out]
    else:
        print(f"image.py: no strip or objcopy, copying {binary} with its debug info", file=sys.stderr)
        return binary
    subprocess.run(command, check=True)
    return out


def image_layer(target_dir, profile, tmpdir):
    """The Layer of the image, from target_dir/profile's binaries and the host."""
    layer = Layer()
    programs = []
    for dest, name in sorted(BINARIES.items()):
        binary = os.path.join(target_dir, profile, name)
        if not os.path.isfile(binary):
            raise Failure(f"{binary} not found: build it first (cargo build"
                          f"{' --release' if profile == 'release' else ''} --bin {name})")
        layer.file(dest, source=stripped(binary, tmpdir), mode=0o755)
        programs.append(binary)

    for package, path in sorted(PACKAGES.items()):
        if os.path.exists(path):
            layer.host(path)
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":  # a program (kcat): it needs its libraries too
                    programs.append(path)
        elif path in REQUIRED_HOST_FILES:
            raise Failure(f"{path} is not installed on this host (the image takes it from the "
                          f"host for the {package} package): {REQUIRED_HOST_FILES[path]}")
        else:
            print(f"image.py: {path} not on this host, the image has no {package}", file=sys.stderr)

    for program in programs:
        interpreter = elf_interpreter(program)
        libraries = shared_libraries(program)
        for path in ([interpreter] if interpreter else []) + libraries:
            layer.host(path)

    layer.file("/etc/passwd", data=PASSWD.encode())
    layer.file("/etc/group", data=GROUP.encode())
    layer.file("/etc/nsswitch.conf", data=NSSWITCH.encode())
    for path in OWNED_DIRS:
        layer.dir(path, 0o755, UID, GID)
    layer.dir("/tmp", 0o1777)
    return layer


# ---------------------------------------------------------------------------- the archive
def image_config(stage, diff_id, created):
    """The image config JSON (the OCI/Docker image spec), from the Dockerfile's last stage."""
    env = {"PATH": DEFAULT_PATH}
    for pair in stage.env:
        key, _, value = pair.partition("=")
        env[key] = value
    config = {
        "User": stage.user,
        "Env": [f"{k}={v}" for k, v in env.items()],
        "WorkingDir": stage.workdir or "/",
        "ExposedPorts": {p if "/" in p else f"{p}/tcp": {} for p in stage.expose},
        "Volumes": {v: {} for v in stage.volumes},
        "Entrypoint": stage.entrypoint,
        "Cmd": stage.cmd,
        "Labels": stage.labels or None,
    }
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {k: v for k, v in config.items() if v is not None},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created,
                     "created_by": "e2e/k8s/image.py build (host binaries and libraries)"}],
    }


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def build(profile, tag, out, target_dir):
    stage = check()  # never build an image that drifted from the Dockerfile
    mtime = source_date_epoch()
    created = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory(prefix="fjord-image.") as tmpdir:
        layer = image_layer(target_dir, profile, tmpdir)
        # Docker creates a missing WORKDIR (root-owned); one the layout has already stays as is.
        if stage.workdir and posixpath.normpath(stage.workdir) not in layer.entries:
            layer.dir(stage.workdir)
        layer_path = os.path.join(tmpdir, "layer.tar")
        with open(layer_path, "wb") as f:
            layer.write(f, mtime)
        digest = hashlib.sha256()
        with open(layer_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        layer_hex = digest.hexdigest()
        config = canonical_json(image_config(stage, "sha256:" + layer_hex, created))
        config_name = hashlib.sha256(config).hexdigest() + ".json"
        layer_name = f"{layer_hex}/layer.tar"
        manifest = canonical_json([{"Config": config_name, "RepoTags": [tag],
                                    "Layers": [layer_name]}])

        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        partial = out + ".partial"
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            def add(name, kind, data=None, source=None):
                info = tarfile.TarInfo(name)
                info.type, info.mtime, info.uname, info.gname = kind, mtime, "", ""
                info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
                if source:
                    info.size = os.path.getsize(source)
                    with open(source, "rb") as f:
                        tar.addfile(info, f)
                elif data is not None:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    tar.addfile(info)
            # The order `docker save` uses: layer directories, config, manifest.
            add(layer_hex, tarfile.DIRTYPE)
            add(layer_name, tarfile.REGTYPE, source=layer_path)
            add(config_name, tarfile.REGTYPE, data=config)
            add("manifest.json", tarfile.REGTYPE, data=manifest)
        os.replace(partial, out)
    return {"config": config_name, "layer": layer_name, "size": os.path.getsize(out)}


# ------------------------------------------------------------------------------- selftest
def read_archive(path):
    """(manifest, config bytes, layer bytes) of a docker archive written by build()."""
    with tarfile.open(path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    manifest = json.loads(files["manifest.json"])
    assert len(manifest) == 1, manifest
    return manifest[0], files, files[manifest[0]["Config"]], files[manifest[0]["Layers"][0]]


def resolve_in_layer(members, path):
    """Follows symlinks inside the layer, as the kernel would in the container; the member or None."""
    parts, resolved, hops = [c for c in path.split("/") if c], [], 0
    while parts:
        name = parts.pop(0)
        if name in (".", ".."):
            if name == ".." and resolved:
                resolved.pop()
            continue
        member = members.get("/".join(resolved + [name]))
        if member is None:
            return None
        if member.issym():
            hops += 1
            assert hops < 40, path
            parts = [c for c in member.linkname.split("/") if c] + parts
            if member.linkname.startswith("/"):
                resolved = []
        else:
            resolved.append(name)
    return members.get("/".join(resolved))


def selftest(out=None):
    stage = check()
    tag = "localhost/fjord:selftest"
    with tempfile.TemporaryDirectory(prefix="fjord-image-selftest.") as tmp:
        # Stand-ins for the Rust binaries: any dynamic glibc program does.
        stand_in = shutil.which("true") or "/bin/true"
        for name in BINARIES.values():
            os.makedirs(os.path.join(tmp, "target", "debug"), exist_ok=True)
            shutil.copy(stand_in, os.path.join(tmp, "target", "debug", name))
        first, second = os.path.join(tmp, "a.tar"), os.path.join(tmp, "b.tar")
        build("debug", tag, first, os.path.join(tmp, "target"))
        build("debug", tag, second, os.path.join(tmp, "target"))
        with open(first, "rb") as a, open(second, "rb") as b:
            assert a.read() == b.read(), "two builds are not byte-identical"

        manifest, files, config_bytes, layer_bytes = read_archive(first)
        assert manifest["RepoTags"] == [tag], manifest
        assert manifest["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json", manifest
        config = json.loads(config_bytes)
        layer_hex = hashlib.sha256(layer_bytes).hexdigest()
        assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + layer_hex]}, config
        assert manifest["Layers"] == [f"{layer_hex}/layer.tar"], manifest
        assert (config["architecture"], config["os"]) == ("amd64", "linux"), config
        c = config["config"]
        assert c["User"] == "10001", c
        assert c["Entrypoint"] == ["/usr/local/bin/fjord-broker"], c
        assert c["Cmd"] == stage.cmd and c["Cmd"][:2] == ["--override", "listeners=PLAINTEXT://0.0.0.0:9092"], c
        assert set(c["ExposedPorts"]) == {"9092/tcp", "9093/tcp", "9644/tcp"}, c
        assert c["Volumes"] == {"/var/lib/fjord": {}}, c
        assert c["Env"] == ["PATH=" + DEFAULT_PATH] and c["WorkingDir"] == "/", c

        with tarfile.open(fileobj=io.BytesIO(layer_bytes)) as tar:
            ordered = tar.getmembers()
            members = {m.name.rstrip("/"): m for m in ordered}
            contents = {m.name: tar.extractfile(m).read() for m in ordered if m.isfile()}
        names = [m.name.rstrip("/") for m in ordered]
        assert len(names) == len(set(names)), "duplicate entries in the layer"
        assert names == sorted(names, key=lambda p: p.split("/")), "layer entries not sorted"
        for m in ordered:
            assert not m.name.startswith(("/", "./")), m.name
            assert m.mtime == source_date_epoch(), (m.name, m.mtime)
            parent = posixpath.dirname(m.name.rstrip("/"))
            assert not parent or members[parent].isdir(), f"{m.name}: parent {parent} not a directory"
        for path in BINARIES:
            m = members[path.lstrip("/")]
            assert m.isfile() and m.mode == 0o755 and (m.uid, m.gid) == (0, 0), (path, m.mode, m.uid)
        home = members["var/lib/fjord"]
        assert home.isdir() and (home.uid, home.gid) == (UID, GID) and home.mode == 0o755, home.uid
        assert members["tmp"].isdir() and members["tmp"].mode == 0o1777, members["tmp"].mode
        assert f"fjord:x:{UID}:{GID}::{HOME}:" in contents["etc/passwd"].decode()
        assert f"fjord:x:{GID}:" in contents["etc/group"].decode()
        assert members["usr/bin/kcat"].isfile(), "no kcat"
        if os.path.exists(PACKAGES["ca-certificates"]):
            assert resolve_in_layer(members, PACKAGES["ca-certificates"]).isfile(), "no CA bundle"
        # Every program's loader and libraries resolve to regular files inside the image.
        for program in [stand_in, "/usr/bin/kcat"]:
            needed = [elf_interpreter(program)] + shared_libraries(program)
            for path in needed:
                member = resolve_in_layer(members, path)
                assert member is not None and member.isfile(), f"{path} (for {program}) missing"

        chroot_run(layer_bytes, tmp)
        if out:
            shutil.copy(first, out)
            print(f"selftest image written to {out}")
    print("image.py selftest: ok (manifest, config, layer, ownership, loader, libraries, "
          "byte-identical rebuild)")


def chroot_run(layer_bytes, tmp):
    """As root, unpacks the layer and runs its programs in a chroot: the loader and every
    library they need must be in the image. Skipped when chroot is not allowed."""
    if os.geteuid() != 0 or not shutil.which("chroot"):
        print("image.py selftest: not root, skipping the chroot run")
        return
    root = os.path.join(tmp, "rootfs")
    with tarfile.open(fileobj=io.BytesIO(layer_bytes)) as tar:
        extra = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        tar.extractall(root, **extra)
    for command in (["/usr/local/bin/fjord-broker"], ["/usr/bin/kcat", "-V"]):
        result = subprocess.run(["chroot", root] + command, capture_output=True, text=True)
        if result.returncode == 125:  # chroot(2) itself was refused (no CAP_SYS_CHROOT)
            print(f"image.py selftest: chroot not permitted, skipping ({result.stderr.strip()})")
            return
        assert result.returncode == 0, f"chroot {' '.join(command)}: exit {result.returncode} {result.stderr}"
    print("image.py selftest: fjord-broker (stand-in) and kcat -V run in a chroot of the layer")


# ------------------------------------------------------------------------------------ main
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="build the docker archive")
    b.add_argument("--profile", choices=["debug", "release"], default="release")
    b.add_argument("--tag", default="localhost/fjord:dev")
    b.add_argument("--out", default="target/fjord-image.tar")
    b.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target"),
                   help="cargo's target directory (default: $CARGO_TARGET_DIR or <repo>/target)")
    commands.add_parser("check", help="the Dockerfile's last stage matches what build makes")
    s = commands.add_parser("selftest", help="build from stand-in binaries and verify the archive")
    s.add_argument("--out", help="also keep the selftest archive here")
    args = parser.parse_args()
    try:
        if args.command == "build":
            result = build(args.profile, args.tag, args.out, args.target_dir)
            print(f"{args.out}: {args.tag}, config {result['config']}, {result['size']} bytes "
                  f"(ctr -n k8s.io images import {args.out} | docker load -i {args.out})")
        elif args.command == "check":
            stage = check()
            print(f"image.py check: ok (Dockerfile stage FROM {stage.base}: {len(stage.copies)} "
                  f"binaries, packages {stage.packages}, user {USER_NAME} {UID}, dirs {OWNED_DIRS})")
        else:
            selftest(args.out)
    except Failure as err:
        print(f"image.py {args.command}: {err}", file=sys.stderr)
        sys.exit(1)
    except AssertionError as err:  # a selftest expectation
        print(f"image.py {args.command} FAILED: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
