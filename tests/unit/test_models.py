"""Model access: canonical names, a key's setting over its tenant's, allowed ∩ discovered."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.models import ModelAccess, canonical_model, effective_access

names = st.from_regex(r"\A[a-z][a-z0-9.]{0,8}(:[a-z0-9]{1,4})?\Z")


@given(names)
def test_canonical_names_always_carry_a_tag_and_are_stable(name: str) -> None:
    canonical = canonical_model(name)
    assert ":" in canonical
    assert canonical_model(canonical) == canonical
    assert canonical.startswith(name)


def test_namespaced_names_are_tagged_on_the_last_part() -> None:
    assert canonical_model("library/llama3") == "library/llama3:latest"
    assert canonical_model("host:5000/team/model") == "host:5000/team/model:latest"


@given(st.sets(names), st.sets(names), st.booleans(), names)
def test_a_model_is_permitted_only_when_discovered_and_allowed(
    allowed: set[str], discovered: set[str], allow_all: bool, model: str
) -> None:
    access = ModelAccess(allow_all, frozenset(canonical_model(n) for n in allowed))
    found = frozenset(canonical_model(n) for n in discovered)
    permitted = access.permits(model, found)
    assert permitted == (
        canonical_model(model) in found and (allow_all or canonical_model(model) in access.allowed)
    )
    assert access.visible(found) == sorted(name for name in found if access.permits(name, found))


def test_the_key_setting_wins_where_it_has_one() -> None:
    assert effective_access(None, None, True, []) == ModelAccess(True, frozenset())
    assert effective_access(False, None, True, ["a"]) == ModelAccess(False, frozenset({"a:latest"}))
    assert effective_access(None, ["b:1"], False, ["a"]) == ModelAccess(False, frozenset({"b:1"}))
    assert effective_access(True, [], False, []).allow_all
