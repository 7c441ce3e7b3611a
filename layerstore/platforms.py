"""Platforms as containerd matches them: ``os/arch[/variant]``, normalised, ranked.

``--platform`` and the ``platform`` of an index entry are normalised the way
containerd's ``platforms.Normalize`` does (``x86_64`` is ``amd64``,
``aarch64`` is ``arm64`` whose default variant ``v8`` is no variant, a bare
``arm`` is ``arm/v7``), so ``linux/arm64`` matches an entry written
``linux/arm64/v8``. An ARM variant also runs older variants' code:
``linux/arm/v7`` takes a ``v6`` image when no ``v7`` one is there, as
containerd's ``platforms.Only`` does.
"""
from __future__ import annotations

import platform as _machine
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from layerstore.errors import InvalidReference, PlatformMismatch, quote

_ARCH_ALIASES = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
}

_PART = re.compile(r"[a-z0-9_.-]+")
# containerd's platforms/database.go
KNOWN_OS = frozenset(
    "aix android darwin dragonfly freebsd hurd illumos ios js linux nacl netbsd openbsd plan9 solaris wasip1 windows zos".split()
)
KNOWN_ARCH = frozenset(
    "386 amd64 amd64p32 arm arm64 arm64be armbe loong64 mips mips64 mips64le mips64p32 mips64p32le mipsle "
    "ppc ppc64 ppc64le riscv riscv64 s390 s390x sparc sparc64 wasm".split()
)


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]``, or an OS or an architecture alone, the rest this machine's; normalised.

        As containerd's ``platforms.Parse``: a single word must be a known OS
        or architecture, and every part is letters, digits, ``_``, ``.``, ``-``.
        """
        parts = text.strip().lower().split("/")
        if not text.strip() or len(parts) > 3 or not all(_PART.fullmatch(part) for part in parts):
            raise InvalidReference(f"platform {quote(text)}", "expected os/arch[/variant]")
        if len(parts) > 1:
            return cls.of(parts[0], parts[1], parts[2] if len(parts) > 2 else "")
        here = host()
        word = "darwin" if parts[0] == "macos" else parts[0]
        if word in KNOWN_OS:
            return cls(word, here.architecture, here.variant)
        alone = cls.of(here.os, word)
        if alone.architecture in KNOWN_ARCH:
            return alone
        raise InvalidReference(f"platform {quote(text)}", "unknown operating system or architecture")

    @classmethod
    def of(cls, os_name: str, arch: str, variant: str | None = "") -> Platform:
        os_name, arch, variant = os_name.lower(), arch.lower(), (variant or "").lower()
        if arch in _ARCH_ALIASES:
            arch, implied = _ARCH_ALIASES[arch]
            variant = variant or implied
        if variant and variant[0].isdigit():
            variant = "v" + variant
        if arch == "amd64" and variant == "v1" or arch == "arm64" and variant == "v8":
            variant = ""
        elif arch == "arm" and not variant:
            variant = "v7"
        return cls("darwin" if os_name == "macos" else os_name, arch, variant)

    @classmethod
    def from_json(cls, data: Any) -> Platform | None:
        """An index entry's ``platform`` object, or an image config (the same keys); None
        when it names no OS and architecture."""
        if not isinstance(data, dict) or not data.get("os") or not data.get("architecture"):
            return None
        return cls.of(str(data["os"]), str(data["architecture"]), str(data.get("variant") or ""))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def rank(self, other: Platform) -> int | None:
        """How well an image for ``other`` runs here: 0 is exact, higher is worse, None never."""
        if other.os != self.os or other.architecture != self.architecture:
            return None
        if other.variant == self.variant:
            return 0
        if self.architecture == "arm" and _arm_level(other.variant) < _arm_level(self.variant):
            return _arm_level(self.variant) - _arm_level(other.variant)
        return None


def _arm_level(variant: str) -> int:
    try:
        return int(variant.removeprefix("v"))
    except ValueError:
        return 99


def host() -> Platform:
    """This machine's platform (``linux/amd64`` here), from the kernel's name for the machine."""
    machine = _machine.machine().lower()
    return Platform.of("linux", {"armv7l": "arm", "armv8l": "arm"}.get(machine, machine))


def require(wanted: Sequence[Platform], actual: Platform | None, subject: str) -> None:
    """An image here holds one platform: ``--platform`` naming others is refused, in dockerd's words."""
    if wanted and (actual is None or all(w.rank(actual) is None for w in wanted)):
        raise PlatformMismatch(subject, "found, but it does not match the specified platform: wanted"
                               f" {', '.join(map(str, wanted))}, actual: {actual or 'none named'}")


def from_flags(values: str | Sequence[str] | None) -> list[Platform]:
    """``--platform`` as a command takes it: not given, given once, or (``rmi``) given again
    or as a comma-separated list, as Docker's string-slice flags take it."""
    given = [values] if isinstance(values, str) else list(values or ())
    return [Platform.parse(part) for value in given for part in value.split(",") if part.strip()]
