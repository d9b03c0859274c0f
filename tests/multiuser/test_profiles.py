"""The spawn form: sizes bounded by what the user may still reserve, tampered forms refused."""

from __future__ import annotations

import pytest
from mlp_spawner.profiles import check_profiles, fits, headroom_note, render_form

PROFILES = [
    {"slug": "small", "display_name": "Small", "default": True,
     "resources": {"cpu": "0.5", "memory": "1Gi"}},
    {"slug": "large", "display_name": "Large", "resources": {"cpu": "4", "memory": "16Gi"}},
]
QUOTA = {"groups": {"ads": {
    "personal_cap": {"cpu": 2.0}, "my_usage": {"cpu": 0.5, "memory": 2**30},
    "pools": {"default": {"limit": {"cpu": 8.0, "memory": 32 * 2**30},
                          "used_by_group": {"cpu": 1.0, "memory": 30 * 2**30}}}}}}


def test_sizes_beyond_what_is_left_are_disabled_with_the_numbers():
    room = headroom_note(QUOTA)
    assert room == {"cpu": 1.5, "memory": 2 * 2**30}
    assert fits(PROFILES[0], room) and not fits(PROFILES[1], room)
    html = render_form(check_profiles(PROFILES), room)
    assert "You may still reserve: cpu 1.5, memory 2Gi" in html
    assert 'value="small" checked>' in html
    assert 'value="large" disabled> Large (more than you may still reserve)' in html


def test_profiles_are_checked():
    with pytest.raises(ValueError, match="empty"):
        check_profiles([])
    with pytest.raises(ValueError, match="used twice"):
        check_profiles([PROFILES[0], dict(PROFILES[0])])
    with pytest.raises(ValueError, match="resources"):
        check_profiles([{"slug": "x", "resources": {}}])


def test_a_tampered_form_is_refused():
    from mlp_spawner.local import LocalMLPSpawner

    spawner = LocalMLPSpawner.__new__(LocalMLPSpawner)
    assert spawner.options_from_form({"profile": ["small"]}) == {"profile": "small"}
    with pytest.raises(ValueError, match="unexpected fields"):
        spawner.options_from_form({"profile": ["small"], "cpu": ["64"]})
