"""Each stage written once: a stage function becomes its asset, with the guards every stage needs.

A *stage function* is a plain function ``fn(key: str, *, <resource>=..., log) -> MaterializeResult``
named after the asset it produces (``video_transcript``). Its keyword-only parameters name the
resources it needs (``media_store``, ``transcriber``...); ``log`` receives a logger. A kind's
:class:`StageSet` is the decorator that turns such a function into a partitioned asset of the
kind's group, and keeps the :class:`Stage` (asset + function) so that batch runs
(:mod:`narra_dagster.core.batch`) call exactly the same guarded function as the asset does:

- **deletion guard**: a stage of an item that is deleted (its tombstone exists) before it
  starts, or while it runs, fails with ``deleted`` and leaves nothing behind (see
  :func:`refuse_if_deleted`);
- **missing-source guard**: a partition with no stored upload (added by hand in the UI, or its
  upload deleted) fails with ``missing_source`` before the stage runs;
- **declared-kind check**: an upload whose file name claims another kind than its bytes
  (``photo.pdf`` holding a PNG) fails with ``type_mismatch``;
- **classified failures**: a :class:`~narra_dagster.core.errors.BadInputError` raised anywhere in
  the stage becomes ``dagster.Failure(allow_retries=False)`` with ``error_class`` metadata; any
  other exception is transient and left to the stage's ``RetryPolicy`` (if it has one);
- **time limit**: a stage running past ``NARRA_STAGE_TIME_LIMIT_S`` (:mod:`narra_dagster.core.limits`)
  is stopped and fails as ``timeout``.
"""


import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg

from narra_dagster.core import limits
from narra_dagster.core.errors import BadInputError, ItemDeleted, classified_failures
from narra_dagster.resources.item_lock import item_lock
from narra_dagster.resources.media_store import SOURCE, MediaStore

# Transient failures (a model runtime or an index write that hiccups) are retried up to 3 times,
# waiting about 2, 4 and 8 s; bad input raises Failure(allow_retries=False) and is never retried.
TRANSIENT_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2.0, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

StageFunction = Callable[..., dg.MaterializeResult]


def upload_name(media_store: MediaStore, key: str) -> str | None:
    """The file name an item was uploaded under (metadata only), or None without a manifest."""
    try:
        return media_store.manifest(key).get("source_name")
    except FileNotFoundError:
        return None


def names_of(manifest: dict) -> list[dict]:
    """Every name an item was uploaded under, oldest first: ``[{"name", "declared_kind"}, ...]``
    (manifests written before names were recorded hold one, ``source_name``)."""
    return manifest.get("names") or [{"name": manifest.get("source_name"),
                                      "declared_kind": manifest.get("declared_kind")}]


def name_fits(manifest: dict) -> bool:
    """True when some name of the item does not claim another kind than its bytes (a name with
    the right extension, or none that narra knows): the item may be processed."""
    kind = manifest.get("kind")
    return not kind or any(n.get("declared_kind") in (None, kind) for n in names_of(manifest))


def check_declared_kind(manifest: dict) -> None:
    """Fail an item all of whose names claim another kind than its bytes (``photo.pdf`` holding
    a PNG). Such a file is routed by its bytes, then stopped: a misleading extension is usually
    a mistake or a disguise, and processing it as something else than its uploader believes
    would index the wrong thing under their name. Names are metadata: once the same bytes are
    uploaded under a fitting name (``photo.png``), the item passes.

    Args:
        manifest: the item's manifest (``kind`` from the bytes and its ``noun``; ``names``,
            each with the ``declared_kind`` its extension claims and that kind's
            ``declared_noun``, recorded at intake so this module needs no registry; a manifest
            written before the nouns were recorded gets ``a <kind> file``).

    Raises:
        BadInputError: ``type_mismatch`` when no name fits.
    """
    if name_fits(manifest):
        return
    kind = manifest["kind"]
    last = names_of(manifest)[-1]
    claimed = last.get("declared_noun") or f"a {last['declared_kind']} file"
    actual = manifest.get("noun") or f"a {kind} file"
    raise BadInputError(
        f"the file is named {last['name']!r}, which says {claimed}, but its bytes are "
        f"{actual}; upload it again with the right extension (the same bytes are the same "
        "item, which is then processed)", code="type_mismatch")


def _deleted(key: str, stone: dict) -> ItemDeleted:
    return ItemDeleted(f"item {key} was deleted at {stone.get('deleted_at', '?')}; nothing of "
                       "it is processed or kept", code="deleted")


def refuse_if_deleted(key: str, get: Callable[[str], Any], resource_keys: Iterable[str]) -> None:
    """Fail a stage whose item is deleted, after removing whatever it wrote.

    Called after the stage function returned, while holding the item's lock
    (:func:`narra_dagster.resources.item_lock.item_lock`), which the deletion holds too. A
    deletion writes the item's tombstone first and removes its files and index rows after, so
    either it writes the tombstone after this check (and then removes what this stage wrote,
    since the stage's writes came before the check) or before it (and this check sees it and
    removes them here). Checking only before the stage leaves a stage that was running when the
    item was deleted free to write its artifacts into a folder the deletion already removed.

    Args:
        key: the partition key.
        get: resource key -> resource.
        resource_keys: the resources the stage took (the indices it may have written to).

    Raises:
        ItemDeleted: when the item's tombstone exists; its folder in the media store and its
            rows in the indices the stage writes to are gone by then.
    """
    store: MediaStore = get("media_store")
    stone = store.tombstone(key)
    if stone is None:
        return
    store.delete_item(key)
    for name in ("search_index", "image_index"):
        if name in resource_keys:
            get(name).delete_item(key)
    raise _deleted(key, stone)


def _guard_source(media_store: MediaStore, key: str) -> None:
    stone = media_store.tombstone(key)
    if stone is not None:  # before missing_source: a deleted item's upload is gone too
        raise _deleted(key, stone)
    if not media_store.exists(key, SOURCE):
        raise BadInputError(
            f"no upload is stored for partition {key}; add files with `narra ingest` or the "
            "inbox, not by adding partitions by hand", code="missing_source")
    try:
        manifest = media_store.manifest(key)
    except FileNotFoundError:
        return
    check_declared_kind(manifest)


def resource_parameters(fn: StageFunction) -> tuple[str, ...]:
    """The resource keys a stage function takes: its keyword-only parameters except ``log``."""
    return tuple(name for name, p in inspect.signature(fn).parameters.items()
                 if p.kind == p.KEYWORD_ONLY and name != "log")


@dataclass(frozen=True)
class Stage:
    """One stage of a kind's chain: its asset and the stage function behind it.

    ``run`` is what the asset's body and a batch run both call, so an item is reported the same
    way whichever ran it.
    """

    asset: dg.AssetsDefinition
    fn: StageFunction
    resource_keys: tuple[str, ...]
    takes_log: bool = True

    @property
    def name(self) -> str:
        """The asset's name, e.g. ``video_transcript``."""
        return self.asset.key.to_user_string()

    @property
    def key(self) -> dg.AssetKey:
        return self.asset.key

    @property
    def retry_policy(self) -> dg.RetryPolicy | None:
        return self.asset.op.retry_policy

    def run(self, key: str, resources: Any, log: logging.Logger | Any) -> dg.MaterializeResult:
        """Run the stage for partition ``key`` with its guards.

        Args:
            key: the partition key (16 hex digits).
            resources: an object with one attribute per resource key (a Dagster context's
                ``resources``) or a mapping of them.
            log: the logger handed to the stage function.

        Raises:
            dagster.Failure: non-retryable, with ``error_class`` metadata, for bad input
                (``deleted``, ``missing_source``, ``type_mismatch`` or the stage's own codes).
            Exception: anything else the stage raises, unchanged (transient: retried by the
                stage's retry policy).
        """
        get = resources.__getitem__ if isinstance(resources, dict) else (
            lambda name: getattr(resources, name))
        kwargs = {name: get(name) for name in self.resource_keys}
        if self.takes_log:
            kwargs["log"] = log
        with classified_failures(self.name):
            _guard_source(get("media_store"), key)
            try:
                with limits.time_limit(limits.current().stage_time_limit_s,
                                       f"{self.name} of {key}"):
                    result = self.fn(key, **kwargs)
            except Exception:
                # a stage that failed because its item went from under it (an artifact read
                # or renamed into a folder just removed) is a deleted item, not an error
                with item_lock(key):
                    refuse_if_deleted(key, get, self.resource_keys)
                raise
            with item_lock(key):
                refuse_if_deleted(key, get, self.resource_keys)
            return result


class StageSet:
    """The stages of one media kind, and the decorator that makes each one.

    ``@video_stage(kinds={"whisper"}, deps=[video_audio], retry=True)`` over a stage function
    ``video_transcript(key, *, media_store, transcriber, log)`` gives the asset
    ``video_transcript``: partitioned by the kind's dynamic partitions, in the kind's group, with
    the function's docstring as its description, a ``code_version`` (bump it when the stage's
    output changes), the resources its parameters name, and the guards described in this
    module. The decorator returns the ``AssetsDefinition`` (so later stages can name it in
    ``deps``); the :class:`Stage` is kept in :attr:`stages`.
    """

    def __init__(self, kind: str, partitions_def: dg.DynamicPartitionsDefinition, group_name: str):
        self.kind = kind
        self.partitions_def = partitions_def
        self.group_name = group_name
        self._stages: dict[dg.AssetKey, Stage] = {}

    def __call__(self, *, kinds: set[str], deps: Sequence[Any] = (), retry: bool = False,
                 pool: str | None = None, check_specs: Sequence[dg.AssetCheckSpec] = (),
                 code_version: str = "1") -> Callable[[StageFunction], dg.AssetsDefinition]:
        def decorate(fn: StageFunction) -> dg.AssetsDefinition:
            resource_keys = tuple(dict.fromkeys(("media_store", *resource_parameters(fn))))
            holder: list[Stage] = []

            @dg.asset(
                name=fn.__name__, partitions_def=self.partitions_def, group_name=self.group_name,
                code_version=code_version, kinds=kinds, deps=list(deps), pool=pool,
                retry_policy=TRANSIENT_RETRY if retry else None, check_specs=list(check_specs),
                required_resource_keys=set(resource_keys), description=inspect.getdoc(fn),
            )
            def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
                return holder[0].run(context.partition_key, context.resources, context.log)

            stage = Stage(asset=_asset, fn=fn, resource_keys=resource_keys,
                          takes_log="log" in inspect.signature(fn).parameters)
            holder.append(stage)
            self._stages[_asset.key] = stage
            return _asset

        return decorate

    @property
    def assets(self) -> list[dg.AssetsDefinition]:
        return [stage.asset for stage in self.stages]

    @property
    def stages(self) -> list[Stage]:
        """Every stage, each after the stages it depends on (declaration order otherwise).

        Raises:
            ValueError: when the stages depend on each other in a cycle.
        """
        return toposort(list(self._stages.values()))

    def stage(self, name: str) -> Stage:
        """The stage whose asset is called ``name``. Raises ``KeyError`` for an unknown one."""
        return self._stages[dg.AssetKey(name)]


def toposort(stages: Iterable[Stage]) -> list[Stage]:
    """Order stages so each comes after every stage it depends on; ties keep the given order.

    Raises:
        ValueError: when the stages depend on each other in a cycle.
    """
    by_key = {s.key: s for s in stages}
    ordered: list[Stage] = []
    done: set[dg.AssetKey] = set()
    pending = list(by_key)
    while pending:
        ready = [k for k in pending
                 if all(dep in done or dep not in by_key
                        for dep in by_key[k].asset.asset_deps.get(k, ()))]
        if not ready:
            raise ValueError(f"stages depend on each other in a cycle: {pending}")
        for k in ready:
            ordered.append(by_key[k])
            done.add(k)
        pending = [k for k in pending if k not in done]
    return ordered
