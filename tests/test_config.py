"""Settings precedence (flags > env > file > defaults), validation and profiles."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import platformdirs
import pytest

from voicebot.config import (
    DEFAULT_PROFILE,
    Profile,
    Settings,
    default_config_path,
    load_settings,
)
from voicebot.errors import ConfigError


@pytest.fixture(autouse=True)
def isolated_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default config path into tmp_path and hide the real VOICEBOT_CONFIG."""
    user_dir = tmp_path / "user-config"
    monkeypatch.delenv("VOICEBOT_CONFIG", raising=False)
    monkeypatch.setattr(platformdirs, "user_config_dir", lambda *args, **kwargs: str(user_dir))
    return user_dir


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


# --- defaults and precedence ----------------------------------------------------------------


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, ""), environ={})
    assert settings == Settings()
    assert settings.server.port == 8765
    assert settings.server.host == "127.0.0.1"
    assert settings.stt.model == "whisper-tiny.en"
    assert settings.tts.speaker is None
    assert settings.server.allowed_origins == ()
    assert settings.profile == "default"
    assert dict(settings.profiles) == {"default": DEFAULT_PROFILE}


def test_file_values_replace_defaults(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        data_dir = "/srv/voicebot"
        [server]
        port = 9001
        idle_timeout_s = 5
        [stt]
        model = "whisper-base"
        [session]
        barge_in = false
        [tts]
        speaker = 3
        """,
    )
    settings = load_settings(path, environ={})
    assert settings.server.port == 9001
    assert settings.server.idle_timeout_s == 5.0
    assert isinstance(settings.server.idle_timeout_s, float)
    assert settings.stt.model == "whisper-base"
    assert settings.session.barge_in is False
    assert settings.tts.speaker == 3
    assert settings.data_dir == "/srv/voicebot"
    # Untouched fields of a touched section keep their defaults.
    assert settings.server.host == "127.0.0.1"
    assert settings.stt.beam_size == 1


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[server]\nport = 9001\n[stt]\nmodel = "whisper-base"\n')
    environ = {"VOICEBOT_SERVER_PORT": "9002", "VOICEBOT_STT_MODEL": "whisper-small"}
    settings = load_settings(path, environ=environ)
    assert settings.server.port == 9002
    assert settings.stt.model == "whisper-small"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("off", False), ("0", False), ("no", False), ("on", True), ("true", True), ("YES", True)],
)
def test_env_bool_words_are_understood(tmp_path: Path, value: str, expected: bool) -> None:
    settings = load_settings(
        write_config(tmp_path, ""), environ={"VOICEBOT_SESSION_BARGE_IN": value}
    )
    assert settings.session.barge_in is expected


def test_env_optional_int_accepts_a_number_and_none(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[tts]\nspeaker = 2\n")
    assert load_settings(path, environ={"VOICEBOT_TTS_SPEAKER": "5"}).tts.speaker == 5
    assert load_settings(path, environ={"VOICEBOT_TTS_SPEAKER": "none"}).tts.speaker is None


def test_env_sets_top_level_fields(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[profiles.pirate]\ndisplay_name = "Flint"\n')
    environ = {"VOICEBOT_PROFILE": "pirate", "VOICEBOT_DATA_DIR": "/data"}
    settings = load_settings(path, environ=environ)
    assert settings.profile == "pirate"
    assert settings.data_dir == "/data"
    assert settings.get_profile().display_name == "Flint"


def test_voicebot_models_env_sets_models_dir_unless_given_explicitly(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    assert load_settings(path, environ={"VOICEBOT_MODELS": "/m"}).models_dir == "/m"
    environ = {"VOICEBOT_MODELS": "/m", "VOICEBOT_MODELS_DIR": "/explicit"}
    assert load_settings(path, environ=environ).models_dir == "/explicit"


def test_overrides_beat_env_and_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'data_dir = "/file"\n[server]\nport = 9001\n')
    settings = load_settings(
        path,
        environ={"VOICEBOT_SERVER_PORT": "9002", "VOICEBOT_DATA_DIR": "/env"},
        overrides={"server.port": 9003, "data_dir": "/flag"},
    )
    assert settings.server.port == 9003
    assert settings.data_dir == "/flag"


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server]\nport = 9001\n")
    settings = load_settings(
        path,
        environ={"VOICEBOT_STT_MODEL": "whisper-small"},
        overrides={"server.port": None, "stt.model": None, "data_dir": None},
    )
    assert settings.server.port == 9001
    assert settings.stt.model == "whisper-small"
    assert settings.data_dir == ""


def test_real_environment_is_not_read_when_environ_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOICEBOT_SERVER_PORT", "1111")
    assert load_settings(write_config(tmp_path, ""), environ={}).server.port == 8765


# --- validation -----------------------------------------------------------------------------


def test_unknown_section_key_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match="'prot'"):
        load_settings(path, environ={})


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'colour = "blue"\n')
    with pytest.raises(ConfigError, match="'colour'"):
        load_settings(path, environ={})


def test_unknown_section_in_override_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nosuch.port"):
        load_settings(write_config(tmp_path, ""), environ={}, overrides={"nosuch.port": 1})


def test_unknown_field_in_override_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'prot'"):
        load_settings(write_config(tmp_path, ""), environ={}, overrides={"server.prot": 1})


def test_unknown_top_level_override_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="colour"):
        load_settings(write_config(tmp_path, ""), environ={}, overrides={"colour": "blue"})


def test_section_that_is_not_a_table_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[server\]"):
        load_settings(write_config(tmp_path, 'server = "x"\n'), environ={})


@pytest.mark.parametrize(
    "text",
    [
        '[server]\nport = "abc"\n',
        "[server]\nport = true\n",
        "[server]\nport = 80.5\n",
        "[server]\nidle_timeout_s = false\n",
        '[session]\nbarge_in = "maybe"\n',
        "[stt]\nmodel = true\n",
        "[stt]\nmodel = [1, 2]\n",
        '[server]\nallowed_origins = {a = "b"}\n',
    ],
)
def test_invalid_value_type_in_file_is_rejected(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="invalid value"):
        load_settings(write_config(tmp_path, text), environ={})


def test_invalid_env_value_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"port: invalid value 'abc'"):
        load_settings(write_config(tmp_path, ""), environ={"VOICEBOT_SERVER_PORT": "abc"})


def test_invalid_override_value_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid value"):
        load_settings(write_config(tmp_path, ""), environ={}, overrides={"server.port": True})


# --- tuple fields ---------------------------------------------------------------------------


def test_allowed_origins_from_a_toml_list(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, '[server]\nallowed_origins = ["https://a.example", "http://b.example:8080"]\n'
    )
    settings = load_settings(path, environ={})
    assert settings.server.allowed_origins == ("https://a.example", "http://b.example:8080")


def test_allowed_origins_from_a_comma_separated_env_var(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[server]\nallowed_origins = ["https://file.example"]\n')
    environ = {"VOICEBOT_SERVER_ALLOWED_ORIGINS": " https://a.example, ,http://b.example ,"}
    settings = load_settings(path, environ=environ)
    assert settings.server.allowed_origins == ("https://a.example", "http://b.example")


# --- profiles -------------------------------------------------------------------------------


def test_file_profile_without_prompt_gets_the_default_prompt(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[profiles.pirate]\ndisplay_name = "Captain Flint"\nspeaking_rate = 1.1\n',
    )
    profile = load_settings(path, environ={}).get_profile("pirate")
    assert profile.name == "pirate"
    assert profile.display_name == "Captain Flint"
    assert profile.speaking_rate == 1.1
    assert profile.system_prompt == DEFAULT_PROFILE.system_prompt
    assert profile.prompt() == "You are a helpful AI assistant. Keep answers brief."


def test_file_profile_keeps_its_own_prompt(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[profiles.pirate]\ndisplay_name = "Flint"\nsystem_prompt = "Arr, {name} here."\n',
    )
    settings = load_settings(path, environ={})
    assert settings.get_profile("pirate").prompt() == "Arr, Flint here."
    # The built-in profile is still there beside it.
    assert settings.get_profile("default") == DEFAULT_PROFILE


def test_file_can_amend_the_default_profile(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[profiles.default]\ndisplay_name = "Max"\n')
    profile = load_settings(path, environ={}).get_profile()
    assert profile.display_name == "Max"
    assert profile.greeting == DEFAULT_PROFILE.greeting
    assert profile.greeting_text() == "Hi, I'm Max. What can I do for you?"
    assert profile.prompt() == DEFAULT_PROFILE.prompt()


def test_profile_prompt_substitutes_every_name_placeholder() -> None:
    profile = Profile(name="p", display_name="Ada", system_prompt="{name}! I am {name}.")
    assert profile.prompt() == "Ada! I am Ada."


def test_profile_name_comes_from_the_table_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[profiles.pirate]\nname = "other"\n')
    settings = load_settings(path, environ={})
    assert settings.get_profile("pirate").name == "pirate"
    assert "other" not in settings.profiles


def test_top_level_profile_selects_the_default_profile(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'profile = "pirate"\n[profiles.pirate]\ndisplay_name = "F"\n')
    settings = load_settings(path, environ={})
    assert settings.get_profile().name == "pirate"
    assert settings.get_profile(None).name == "pirate"


def test_get_profile_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[profiles.pirate]\n[profiles.butler]\n")
    settings = load_settings(path, environ={})
    with pytest.raises(ConfigError, match=r"'robot' \(known: butler, default, pirate\)"):
        settings.get_profile("robot")


def test_top_level_profile_pointing_to_a_missing_profile_is_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'profile = "x"\n')
    with pytest.raises(ConfigError, match="unknown profile 'x'"):
        load_settings(path, environ={})


def test_unknown_profile_key_is_named(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[profiles.pirate]\nvoise = "x"\n')
    with pytest.raises(ConfigError, match="'voise'"):
        load_settings(path, environ={})


def test_profile_that_is_not_a_table_is_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[profiles]\npirate = "arr"\n')
    with pytest.raises(ConfigError, match="profiles.pirate"):
        load_settings(path, environ={})


def test_settings_and_profiles_are_frozen(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, ""), environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.get_profile().display_name = "x"  # type: ignore[misc]


# --- the config file itself -----------------------------------------------------------------


def test_malformed_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server\nport = = 1\n")
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value)


def test_unreadable_config_path_is_a_config_error(tmp_path: Path) -> None:
    directory = tmp_path / "config.toml"
    directory.mkdir()
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(directory, environ={})


def test_explicit_missing_config_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value)


def test_missing_default_config_file_is_fine(isolated_user_config: Path) -> None:
    assert default_config_path() == isolated_user_config / "config.toml"
    assert not default_config_path().exists()
    assert load_settings(environ={}) == Settings()


def test_default_config_file_is_read_when_present(isolated_user_config: Path) -> None:
    isolated_user_config.mkdir()
    (isolated_user_config / "config.toml").write_text("[server]\nport = 9100\n")
    assert load_settings(environ={}).server.port == 9100


def test_voicebot_config_in_the_process_environment_sets_the_default_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, "[server]\nport = 9200\n")
    monkeypatch.setenv("VOICEBOT_CONFIG", str(path))
    assert default_config_path() == path
    assert load_settings().server.port == 9200


def test_voicebot_config_in_environ_is_the_config_path(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server]\nport = 9300\n")
    assert load_settings(environ={"VOICEBOT_CONFIG": str(path)}).server.port == 9300


def test_missing_file_named_by_voicebot_config_in_environ_is_named(tmp_path: Path) -> None:
    path = tmp_path / "from-env.toml"
    with pytest.raises(ConfigError, match="from-env.toml"):
        load_settings(environ={"VOICEBOT_CONFIG": str(path)})


PIRATE = """
[profiles.pirate]
voice = "/voices/pirate.onnx"
speaking_rate = 0.9
llm_model = "/models/pirate-llm"
"""


def test_flags_outrank_a_profiles_voice_rate_and_model(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(PIRATE)
    plain = load_settings(config, environ={}).get_profile("pirate")
    assert (plain.voice, plain.speaking_rate, plain.llm_model) == (
        "/voices/pirate.onnx",
        0.9,
        "/models/pirate-llm",
    )
    flagged = load_settings(
        config,
        environ={},
        overrides={"tts.voice": "/v/other.onnx", "tts.speaking_rate": 1.3, "llm.model": "m"},
    )
    pirate = flagged.get_profile("pirate")
    # The profile falls back to the section's value, which the flag set.
    assert (pirate.voice, pirate.speaking_rate, pirate.llm_model) == ("", 0.0, "")
    assert (flagged.tts.voice, flagged.tts.speaking_rate, flagged.llm.model) == (
        "/v/other.onnx",
        1.3,
        "m",
    )


def test_the_environment_outranks_a_profiles_voice_but_not_what_it_leaves_alone(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(PIRATE)
    settings = load_settings(config, environ={"VOICEBOT_TTS_VOICE": "/v/env.onnx"})
    pirate = settings.get_profile("pirate")
    assert pirate.voice == "" and settings.tts.voice == "/v/env.onnx"
    assert pirate.speaking_rate == 0.9 and pirate.llm_model == "/models/pirate-llm"


# --- the store ----------------------------------------------------------------------------------


def test_the_store_is_a_sqlite_file_unless_a_postgresql_url_is_set(tmp_path: Path) -> None:
    settings = load_settings(
        write_config(tmp_path, ""), environ={}, overrides={"data_dir": str(tmp_path / "d")}
    )
    assert settings.store.url == ""
    assert settings.store_location() == str(tmp_path / "d" / "voicebot.db")
    in_file = load_settings(
        write_config(tmp_path, '[store]\nurl = "postgresql://db.lan/voicebot"\n'), environ={}
    )
    assert in_file.store_location() == "postgresql://db.lan/voicebot"
    url = "postgresql://bot:pw@db.lan:5432/voicebot"
    from_env = load_settings(write_config(tmp_path, ""), environ={"VOICEBOT_STORE_URL": url})
    assert from_env.store_location() == url
    with pytest.raises(ConfigError, match="PostgreSQL URL"):
        load_settings(write_config(tmp_path, '[store]\nurl = "mysql://db/x"\n'), environ={})
