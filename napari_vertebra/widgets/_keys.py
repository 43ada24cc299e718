"""Keys a widget binds for a while on the viewer and on some layers, then gives back.

napari looks a key up in the active layer's keymap before the viewer's, so a key bound
on the viewer alone is taken by the layer (a Shapes layer's R draws rectangles, A selects
all). :class:`KeyBindings` binds the widget's keys on the viewer and on the layers it is
given (their instance keymaps, which come before the layer class's own keys) and, on
:meth:`~KeyBindings.unbind`, puts back whatever each of them had before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["KeyBindings"]


class KeyBindings:
    """``keys`` (key -> zero-argument callable) bound on a set of keymap providers."""

    def __init__(self, keys: dict[str, Callable[[], Any]]) -> None:
        self.keys = dict(keys)
        self._bound: list[tuple[Any, str, Any, Any]] = []  # (owner, key, handler, before)

    @property
    def active(self) -> bool:
        """True while bound somewhere."""
        return bool(self._bound)

    def owners(self) -> list[Any]:
        """The viewer / layers the keys are bound on now."""
        out: list[Any] = []
        for owner, *_ in self._bound:
            if not any(owner is o for o in out):
                out.append(owner)
        return out

    def bind(self, owners: Iterable[Any]) -> None:
        """Bind the keys on each of ``owners`` not bound yet (overriding their own)."""
        from napari.utils.key_bindings import coerce_keybinding

        done = {(id(o), k) for o, k, _, _ in self._bound}
        for owner in owners:
            for key, fn in self.keys.items():
                if (id(owner), key) in done:
                    continue
                handler = _handler(fn)
                before = owner.keymap.get(coerce_keybinding(key))
                owner.bind_key(key, handler, overwrite=True)
                self._bound.append((owner, key, handler, before))

    def unbind(self) -> None:
        """Give every key back: what each owner had bound before, or nothing."""
        from napari.utils.key_bindings import coerce_keybinding

        for owner, key, handler, before in reversed(self._bound):
            if owner.keymap.get(coerce_keybinding(key)) is handler:  # not rebound since
                owner.bind_key(key, before, overwrite=True)
        self._bound = []


def _handler(fn: Callable[[], Any]) -> Callable[[Any], None]:
    def handler(_owner: Any) -> None:  # napari passes the viewer or the layer
        fn()

    return handler
