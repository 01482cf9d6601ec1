"""The sync client against the real server: state, errors, streaming, generation, retries."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator

import grpc
import pytest

from seqpredict.client import (
    Client,
    FeedRequest,
    InvalidArgument,
    NotFound,
    PositionMismatch,
    Prediction,
    Session,
    Unavailable,
)
from seqpredict.client.channel import (
    MAX_MESSAGE_BYTES,
    RETRYABLE_METHODS,
    ChannelConfig,
    channel_options,
    service_config,
)
from seqpredict.client.errors import from_request_error

PROMPT = "ROMEO:\nWhat light"
TOL = 1e-5


@pytest.fixture(scope="module")
def client(server) -> Iterator[Client]:
    with Client(server.address, timeout=30) as c:
        yield c


def new_session(client: Client, strict: bool = False) -> Session:
    return client.session(f"test-{uuid.uuid4().hex}", strict=strict)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_same_distribution(a: Prediction, b: Prediction) -> None:
    assert [t.id for t in a.next] == [t.id for t in b.next]
    for x, y in zip(a.next, b.next, strict=True):
        assert x.probability == pytest.approx(y.probability, abs=TOL)


# -- feeding and state --------------------------------------------------------------------------------
def test_feed_text_then_tokens_keeps_state(client: Client) -> None:
    vocab = client.model_info().vocabulary
    s = new_session(client)
    first = s.feed("To be, or ")
    assert (first.position, first.created, s.position) == (10, True, 10)
    second = s.feed([vocab.index(ch) for ch in "not to be"])
    assert (second.position, second.created, s.position) == (19, False, 19)
    assert second.top == second.next[0] and second.steps is None
    whole = new_session(client).feed("To be, or not to be")
    assert_same_distribution(second, whole)


def test_state_survives_across_clients(server, client: Client) -> None:
    sid = f"test-{uuid.uuid4().hex}"
    client.session(sid).feed("Good morrow, ")
    with Client(server.address) as other:  # a second channel, a second connection
        later = other.session(sid).feed("cousin")
    assert (later.position, later.created) == (19, False)
    assert_same_distribution(later, new_session(client).feed("Good morrow, cousin"))


def test_reset_restarts_like_a_fresh_session(client: Client) -> None:
    s = new_session(client)
    s.feed("some history that reset must forget")
    again = s.feed("Hamlet", reset=True)
    assert (again.position, s.position) == (6, 6)
    assert_same_distribution(again, new_session(client).feed("Hamlet"))


def test_empty_feed_predicts_without_moving(client: Client) -> None:
    s = new_session(client)
    fed = s.feed("abc", all_steps=True, top_k=3)
    assert fed.steps is not None and len(fed.steps) == 3 and fed.steps[-1] == fed.next
    assert all(len(step) == 3 for step in fed.steps)
    same = s.feed()
    assert same.position == 3 and not same.created
    assert [t.id for t in same.next[:3]] == [t.id for t in fed.next]


def test_end_then_info_raises_not_found(client: Client) -> None:
    s = new_session(client)
    s.feed("hello")
    info = s.info()
    assert info.position == 5 and info.created_at.tzinfo is not None
    assert info.created_at <= info.last_used_at < info.expires_at
    assert s.end() == 5
    assert s.position == 0
    with pytest.raises(NotFound) as caught:
        s.info()
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(NotFound):
        s.end()


def test_feed_with_end_releases_the_session(client: Client) -> None:
    s = new_session(client)
    last = s.feed("bye", end=True)
    assert (last.ended, last.position, s.position) == (True, 3, 0)
    with pytest.raises(NotFound):
        s.info()


def test_strict_session_detects_lost_state(client: Client) -> None:
    s = new_session(client, strict=True)
    s.feed("abc")
    s.feed("def")
    assert s.position == 6
    client.session(s.session_id).end()  # behind its back: as if evicted or the server restarted
    with pytest.raises(PositionMismatch) as caught:
        s.feed("ghi")
    assert caught.value.actual_position == 0
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # Generate reports the mismatch as a status with trailing metadata rather than in-band.
    with pytest.raises(PositionMismatch) as caught:
        s.generate_text(5, seed=1)
    assert caught.value.actual_position == 0
    assert s.position == 6  # nothing was computed; the caller decides how to recover


def test_strict_session_learns_an_unknown_position_first(client: Client) -> None:
    sid = f"test-{uuid.uuid4().hex}"
    client.session(sid).feed("twelve chars")
    s = client.session(sid, strict=True)  # position unknown: fetched before the first feed
    assert s.feed("!").position == 13
    with pytest.raises(PositionMismatch) as caught:
        client.session(sid, strict=True, position=0).feed("x")
    assert caught.value.actual_position == 13


def test_explicit_expected_position(client: Client) -> None:
    s = new_session(client)
    s.feed("abcd")
    assert s.feed("e", expected_position=4).position == 5
    with pytest.raises(PositionMismatch) as caught:
        s.feed("f", expected_position=4)
    assert caught.value.actual_position == 5


def test_in_band_errors_are_typed(client: Client) -> None:
    s = new_session(client)
    s.feed("abc")
    with pytest.raises(InvalidArgument) as caught:
        s.feed("caf\u00e9 \u20ac")  # not in a Shakespeare vocabulary
    assert "vocabulary" in caught.value.message and caught.value.session_id == s.session_id
    with pytest.raises(InvalidArgument):
        s.feed([10_000])
    with pytest.raises(InvalidArgument):
        s.feed("x", top_k=0)
    with pytest.raises(InvalidArgument):
        client.session("not a valid id!").feed("x")
    assert s.info().position == 3  # failed requests change nothing


def test_error_mapping_of_in_band_codes() -> None:
    error = from_request_error(9, "moved on", 42, "s1")
    assert isinstance(error, PositionMismatch) and error.actual_position == 42 and error.session_id == "s1"
    assert type(from_request_error(99, "", 0)).__name__ == "ServerError"


# -- one stream, many feeds ---------------------------------------------------------------------------
def test_stream_answers_in_order(client: Client) -> None:
    s = new_session(client)
    inputs = ["To ", "be", [1, 2, 3], FeedRequest("!", top_k=2, all_steps=True)]
    answers = list(s.stream(inputs))
    assert [p.position for p in answers] == [3, 5, 8, 9]
    assert [p.request_id for p in answers] == [0, 1, 2, 3]
    assert answers[0].created and not any(p.created for p in answers[1:])
    assert len(answers[-1].next) == 2 and answers[-1].steps is not None and len(answers[-1].steps) == 1
    assert s.position == 9
    alone = new_session(client)
    for item, streamed in zip(["To ", "be", [1, 2, 3]], answers, strict=False):
        assert_same_distribution(streamed, alone.feed(item))


def test_stream_errors_raise_or_are_returned(client: Client) -> None:
    s = new_session(client)
    with pytest.raises(InvalidArgument):
        list(s.stream(["ab", "\u20ac", "cd"]))
    s2 = new_session(client)
    outcomes = list(s2.stream(["ab", "\u20ac", "cd"], return_errors=True))
    assert isinstance(outcomes[1], InvalidArgument)
    assert [o.position for o in outcomes if isinstance(o, Prediction)] == [2, 4]


def test_strict_stream_numbers_expected_positions(client: Client) -> None:
    s = new_session(client, strict=True)
    answers = list(s.stream(["abc", FeedRequest("de", reset=True), [4, 5, 6]]))
    assert [p.position for p in answers] == [3, 2, 5]
    client.session(s.session_id).feed("z")  # another writer moves the session
    with pytest.raises(PositionMismatch) as caught:
        list(s.stream(["q"]))
    assert caught.value.actual_position == 6


def test_predict_many_equals_individual_feeds(client: Client) -> None:
    ids = [f"test-{uuid.uuid4().hex}" for _ in range(3)]
    texts = ["First Citizen", "Before we proceed", "Speak, speak"]
    batch = client.predict_many([(sid, text) for sid, text in zip(ids, texts, strict=True)])
    follow = client.predict_many([(ids[0], FeedRequest(" any", top_k=3)), ("bad id!", "x"), (ids[2], [1, 2])])
    alone = [new_session(client) for _ in ids]
    for got, s, text in zip(batch, alone, texts, strict=True):
        assert isinstance(got, Prediction)
        assert_same_distribution(got, s.feed(text))
    assert isinstance(follow[0], Prediction) and len(follow[0].next) == 3
    assert isinstance(follow[1], InvalidArgument)
    assert isinstance(follow[2], Prediction) and follow[2].position == len(texts[2]) + 2
    # Batched with other sessions, the head runs over several rows at once: equal within the contract.
    assert_same_distribution(follow[0], alone[0].feed(" any", top_k=3))


# -- generation ---------------------------------------------------------------------------------------
def test_same_seed_same_state_same_text(client: Client) -> None:
    s = new_session(client)
    first = s.generate_text(60, prompt=PROMPT, seed=11, reset=True)
    second = s.generate_text(60, prompt=PROMPT, seed=11, reset=True)
    assert first == second and len(first) == 60
    assert s.position == len(PROMPT) + 60


def test_max_tokens_is_honoured(client: Client) -> None:
    s = new_session(client)
    tokens = list(s.generate(17, prompt=PROMPT, seed=3))
    assert len(tokens) == 17
    assert [t.position for t in tokens] == list(range(len(PROMPT) + 1, len(PROMPT) + 18))
    assert [t.finish_reason for t in tokens] == [None] * 16 + ["max_tokens"]
    assert tokens[0].created and not tokens[1].created
    assert all(0 < t.probability <= 1 for t in tokens)


def test_stop_string_ends_generation(client: Client) -> None:
    s = new_session(client)
    full = s.generate_text(80, prompt=PROMPT, seed=5, reset=True)
    stop = full[20]  # a character that the same seed certainly produces
    cut = full.index(stop) + 1
    tokens = list(s.generate(80, prompt=PROMPT, seed=5, reset=True, stop=[stop]))
    assert "".join(t.text for t in tokens) == full[:cut]
    assert (tokens[-1].finish_reason, tokens[-1].stop) == ("stop", stop)
    assert s.position == len(PROMPT) + cut


def test_closing_a_generation_early_leaves_a_consistent_session(client: Client) -> None:
    reference = new_session(client)
    full = list(reference.generate(400, prompt=PROMPT, seed=21))
    s = new_session(client)
    with s.generate(400, prompt=PROMPT, seed=21) as tokens:
        received = [t for _, t in zip(range(5), tokens, strict=False)]
    assert [t.token for t in received] == [t.token for t in full[:5]]
    fed = s.position - len(PROMPT)  # re-read from the server: it may have fed more than arrived
    assert 5 <= fed <= 400
    replay = new_session(client)
    replay.feed(PROMPT)
    expected = replay.feed([t.token for t in full[:fed]]) if fed else replay.feed()
    here = s.feed()
    assert here.position == expected.position == len(PROMPT) + fed
    assert_same_distribution(here, expected)


def test_dropped_generation_is_cancelled_and_resynchronised(client: Client) -> None:
    s = new_session(client, strict=True)
    for i, _ in enumerate(s.generate(400, prompt=PROMPT, seed=2)):
        if i == 3:
            break
    assert s.position is None  # cancelled on garbage collection: the server may have fed more
    after = s.feed("x")  # strict: re-reads the position first instead of failing or guessing
    assert after.position >= len(PROMPT) + 5


def test_generate_then_feed_continues_the_same_state(client: Client) -> None:
    s = new_session(client)
    text = s.generate_text(30, prompt=PROMPT, seed=9)
    after = s.feed("!")
    assert after.position == len(PROMPT) + 30 + 1
    assert_same_distribution(after, new_session(client).feed(PROMPT + text + "!"))


def test_generate_argument_errors(client: Client) -> None:
    s = new_session(client)
    with pytest.raises(InvalidArgument):
        s.generate_text(0)
    with pytest.raises(InvalidArgument):
        s.generate_text(5, temperature=-1.0)
    with pytest.raises(TypeError):
        s.generate(5, stop="\n")  # one stop string per character is never what was meant


# -- model, health, connection ------------------------------------------------------------------------
def test_model_info_describes_the_served_checkpoint(server, checkpoint, client: Client) -> None:
    info = client.model_info()
    ckpt = checkpoint  # the shipped checkpoint the server serves
    assert info.fingerprint == ckpt.fingerprint and len(info.fingerprint) == 64
    assert info.name == ckpt.path.rsplit("/", 1)[-1]
    assert (info.cell, info.vocab_size) == (ckpt.config.cell, len(ckpt.vocab))
    assert (info.hidden_size, info.num_layers, info.embed_dim) == (
        ckpt.config.hidden_size,
        ckpt.config.num_layers,
        ckpt.config.embed_dim,
    )
    assert info.vocabulary == ckpt.vocab.chars and info.state_names == tuple(ckpt.config.state_names)
    assert info.training_record == json.loads(json.dumps(ckpt.training))
    assert info.state_bytes_per_session > 0
    assert info.limits.max_tokens_per_request == server.settings.max_tokens_per_request
    assert info.limits.idle_ttl_seconds == server.settings.idle_ttl_s


def test_health_is_serving(client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.health("seqpredict.v1.SequencePredictor") == "SERVING"
    with pytest.raises(NotFound):
        client.health("no.such.Service")


def test_retries_only_for_idempotent_methods() -> None:
    options = dict(channel_options())
    config = json.loads(options["grpc.service_config"])
    assert config == service_config()
    (method_config,) = config["methodConfig"]
    names = {(n["service"], n["method"]) for n in method_config["name"]}
    assert (
        names
        == set(RETRYABLE_METHODS)
        == {
            ("seqpredict.v1.SequencePredictor", "GetSession"),
            ("seqpredict.v1.SequencePredictor", "GetModelInfo"),
            ("seqpredict.v1.SequencePredictor", "ExportSession"),
            ("seqpredict.v1.SequencePredictor", "ListSessions"),
            ("grpc.health.v1.Health", "Check"),
        }
    )
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert options["grpc.keepalive_time_ms"] >= 10_000  # the server refuses pings more often than that
    assert dict(channel_options([("grpc.keepalive_time_ms", 60_000)]))["grpc.keepalive_time_ms"] == 60_000


def test_bearer_token_metadata_and_tls_arguments() -> None:
    limit = ("seqpredict-max-receive-bytes", str(MAX_MESSAGE_BYTES))  # so the server refuses what we cannot take
    assert ChannelConfig(token="s3cret").metadata() == (limit, ("authorization", "Bearer s3cret"))
    assert ChannelConfig().metadata() == (limit,)
    assert ChannelConfig(root_certificates=b"pem").secure and not ChannelConfig().secure
    with pytest.raises(ValueError):
        ChannelConfig(private_key=b"key")  # a key without its certificate chain


def test_unreachable_server_raises_unavailable() -> None:
    with Client(f"127.0.0.1:{closed_port()}", timeout=3) as c:
        with pytest.raises(Unavailable):
            c.health()
        with pytest.raises(Unavailable):
            c.session("s").feed("x")
