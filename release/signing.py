"""Sign and verify artifact directories with OpenSSF model-signing (elliptic-curve keys).

The signature, OUT/NAME/model.sig, is a Sigstore bundle holding a DSSE envelope with an
in-toto statement of every file's sha256, so the upstream tool alone verifies it:

    model_signing verify key OUT/NAME --signature OUT/NAME/model.sig --public_key PUB
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

SIGNATURE = "model.sig"


class SigningError(Exception):
    """A key that cannot sign, or a signature that does not verify (message names why)."""


def _load_private(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise SigningError(f"signing key not found: {path}") from None
    except (ValueError, TypeError) as exc:
        raise SigningError(f"signing key {path} is not an unencrypted PEM private key: "
                           f"{exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SigningError(f"signing key {path} is a {type(key).__name__}; model-signing's key "
                           "signer needs an elliptic-curve key (P-256 or P-384)")
    return key


def public_pem(private_key_path: Path) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return _load_private(private_key_path).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public_key_pem: bytes) -> str:
    """sha256 of the public key's PEM: names the key in reports and the store's index."""
    return hashlib.sha256(public_key_pem.strip()).hexdigest()


def check_signing_key(path: Path) -> str:
    """Validate a private key before any work starts; returns its public key id."""
    return key_id(public_pem(path))


def generate_key(private_path: Path) -> Path:
    """Write a new P-256 private key (mode 0600) and its public key beside it (.pub)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public = private_path.with_suffix(".pub")
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return public


def _hashing(directory: Path):
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[directory / SIGNATURE])


def sign_directory(directory: Path, private_key: Path) -> Path:
    from model_signing import signing

    signature = directory / SIGNATURE
    try:
        (signing.Config().set_hashing_config(_hashing(directory))
         .use_elliptic_key_signer(private_key=str(private_key))
         .sign(directory, signature))
    except Exception as exc:  # noqa: BLE001 - model_signing raises several types
        raise SigningError(f"model-signing could not sign {directory.name}: "
                           f"{type(exc).__name__}: {exc}") from exc
    return signature


def links_in(directory: Path) -> list[str]:
    """The symbolic links in `directory` (itself included, nothing followed), as
    'relative path -> target'."""
    found = []
    if directory.is_symlink():
        return [f"{directory.name} -> {os.readlink(directory)}"]
    for root, dirs, files in os.walk(directory):   # os.walk does not follow links
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                found.append(f"{path.relative_to(directory)} -> {os.readlink(path)}")
    return found


def verify_directory(directory: Path, public_key: Path) -> None:
    """Raise SigningError naming the changed file, or the key, if verification fails."""
    from model_signing import verifying

    directory = Path(directory)
    links = links_in(directory)
    if links:   # before anything is read through them
        raise SigningError(f"{directory.name}: holds symbolic links, which are never followed: "
                           f"{', '.join(links[:5])}")
    signature = directory / SIGNATURE
    if not signature.is_file():
        raise SigningError(f"{directory} is not signed: no {SIGNATURE}")
    if not Path(public_key).is_file():
        raise SigningError(f"public key not found: {public_key}")
    try:
        (verifying.Config().set_hashing_config(_hashing(directory))
         .use_elliptic_key_verifier(public_key=str(public_key))
         .verify(directory, signature))
    except Exception as exc:  # noqa: BLE001 - ValueError names the file or the key
        text = str(exc)
        if "Key mismatch" in text or "public key" in text.lower():
            raise SigningError(f"{directory.name}: signed with another key than {public_key} "
                               f"({text})") from None
        raise SigningError(f"{directory.name}: signature does not match the files: "
                           f"{_short(text)}") from None


def _short(text: str) -> str:
    """model_signing's mismatch text with the raw digests cut, keeping the file names."""
    if "Hash mismatch for" in text:
        names = [part.split("'")[1] for part in text.split("Hash mismatch for ")[1:]]
        return "changed file(s): " + ", ".join(names)
    return text[:300]
