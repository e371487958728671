"""The verdict of ``fastsigclr data verify`` on files whose md5 is not the official one: a batch
training would refuse (``cifar.split_problems``, the very checks training runs) is corrupt
(download again); batches that pass are usable data with other bytes (a re-encoded or rebuilt
copy), which deleting would lose. Training reads only the batches: a missing or damaged
class-name file (CIFAR-100's ``meta``, CIFAR-10's ``batches.meta``) is said to be only that."""

from __future__ import annotations

from pathlib import Path

from fastsigclr.data.cifar import BatchError, load_pickle, split_problems
from fastsigclr.data.files import redownload_hint
from fastsigclr.data.info import DatasetError, DatasetInfo


class UnofficialData(DatasetError):
    """Files whose md5 is not the official one but that training can use: usable data."""

    def __init__(self, message: str, sums: dict[str, str]) -> None:
        super().__init__(message)
        self.sums = sums


def _unloadable(path: Path) -> str | None:
    """Why the file at ``path`` does not load (it is missing, or not a pickled dictionary), or None."""
    try:
        load_pickle(path)
    except BatchError as err:
        return err.entry
    return None


def check_official(info: DatasetInfo, folder: Path, sums: dict[str, str]) -> None:
    """Compare ``sums`` (name → md5 of the files in ``folder``) with ``info.file_md5``: a batch
    training would refuse is a DatasetError that says to download again; batches that only
    differ, and a class-name file that is missing or does not load, are an ``UnofficialData``
    error that says to keep the folder."""
    differ = [(name, md5) for name, md5 in info.file_md5 if sums.get(name) != md5]
    splits = {"train": info.train_files, "test": info.test_files}
    batches = {*info.train_files, *info.test_files}
    unusable = [
        err.entry
        for split, names in splits.items()
        if any(name in names for name, _ in differ)
        for err in split_problems(info, folder, split)
    ]
    # The class-name file: training never reads it, so its loss or damage is said as only that.
    broken = {name: why for name, _ in differ if name not in batches and (why := _unloadable(folder / name))}
    aside = list(broken.values())
    listed = [
        f"{name} has md5 {sums[name]}, expected {md5}"
        for name, md5 in differ
        if name in sums and name not in broken
    ]
    if unusable:
        raise DatasetError(
            f"{folder} is not the official {info.name}: {'; '.join((*listed, *unusable, *aside))}. The "
            f"files are corrupt: {redownload_hint(info, folder)}"
        )
    if not differ:
        return
    said = []
    if listed:
        said.append(
            "Each loads as a complete batch of the right shape: usable data (a re-encoded or rebuilt "
            "copy, or pixels changed in place), so keep it"
        )
    if aside:
        said.append(
            f"{', '.join(broken)} only names the classes, which training does not read (it reads "
            f"{', '.join((*info.train_files, *info.test_files))})"
            + ("" if listed else ": training can use this folder, so keep it")
        )
    raise UnofficialData(
        f"{folder} is not the official {info.name}: {'; '.join((*aside, *listed))}. {'. '.join(said)}; "
        f"download again only if you need the official bytes",
        sums,
    )
