"""OpenAI Realtime as it is today: GA events (and beta on request), client events of both
shapes, the conversation, against the real server with the real models.

Every event read through :class:`tests.voice.Events` is validated against the ``openai``
SDK's own models as it arrives (tests/realtime_schema.py), so each test here is also a
conformance test of the events it provokes.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import pytest
import trio

from tests import corpus
from tests.conftest import create_session
from tests.voice import Events, Stream, post_events, push_to_talk, say, wer

if TYPE_CHECKING:
    import httpx
    import numpy as np

    from tests.conftest import SessionHandle

SENTENCE = "Could you remind me to water the plants on the balcony tomorrow morning?"
GA_ONLY = (
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.output_audio.done",
    "conversation.item.added",
    "conversation.item.done",
)
BETA_ONLY = (
    "response.audio_transcript.delta",
    "response.audio_transcript.done",
    "response.audio.done",
    "conversation.item.created",
)


async def spoken_turn(
    client: httpx.AsyncClient, s: SessionHandle, events: Events, samples: np.ndarray
) -> dict[str, Any]:
    stream = Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        nursery.start_soon(stream.run, client, s)
        await events.wait_for("session.created")
        await push_to_talk(client, s, samples)
        done = await events.wait_for("response.done", within=60)
        await events.wait_for("output_audio_buffer.stopped", within=30)
        nursery.cancel_scope.cancel()
    return done


async def test_a_spoken_turn_speaks_ga(client: httpx.AsyncClient) -> None:
    """The whole GA sequence of one spoken turn, in order, every event valid."""
    speech = corpus.utterance(SENTENCE, corpus.available_voices()[-1]).padded(0.3, 0.3)
    s = await create_session(client, turn_detection=None)
    events = Events()
    done = await spoken_turn(client, s, events, speech.samples)
    types = events.types()
    assert not set(types) & set(BETA_ONLY), types
    order = [
        "input_audio_buffer.committed",
        "conversation.item.added",  # the user's item, its transcript to come
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "output_audio_buffer.started",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
        "output_audio_buffer.stopped",
    ]
    at = [types.index(t) for t in order]
    assert at == sorted(at), list(zip(order, at, strict=True))
    (completed,) = events.of("conversation.item.input_audio_transcription.completed")
    assert wer(SENTENCE, completed["transcript"]) <= 0.25
    assert completed["usage"]["type"] == "duration"
    assert 3.0 < completed["usage"]["seconds"] < 8.0
    user, reply = (e["item"] for e in events.of("conversation.item.done"))
    assert user["content"] == [{"type": "input_audio", "transcript": completed["transcript"]}]
    response = done["response"]
    assert response["status"] == "completed"
    (item,) = response["output"]
    assert item == reply
    assert item["content"][0]["type"] == "output_audio"
    assert item["content"][0]["transcript"] == completed["transcript"]  # echo
    assert response["output_modalities"] == ["audio"]
    assert response["latency"]["first_audio_byte_ms"] is not None  # voxwire's extra


@pytest.mark.parametrize("where", ["creation", "stream"])
async def test_the_beta_switch_gives_the_beta_names(client: httpx.AsyncClient, where: str) -> None:
    """``OpenAI-Beta: realtime=v1`` on creation (every reader) or on the event stream
    (that reader): beta names and shapes, no GA-only event; each valid in the beta SDK."""
    headers = {"OpenAI-Beta": "realtime=v1"} if where == "creation" else {}
    r = await client.post("/api/sessions", json={"turn_detection": None}, headers=headers)
    assert r.status_code == 201, r.text
    body = r.json()
    from tests.conftest import SessionHandle

    s = SessionHandle(body["id"], body["token"], body["urls"], body)
    # on creation, a plain reader: the session's choice holds
    events = Events(beta=True, beta_header=where == "stream")
    speech = corpus.utterance(SENTENCE, "piper").padded(0.3, 0.3)
    await spoken_turn(client, s, events, speech.samples)
    types = set(events.types())
    assert not types & set(GA_ONLY), types
    assert {"response.audio_transcript.delta", "response.audio.done"} <= types
    assert "conversation.item.created" in types
    created = events.of("session.created")[0]["session"]
    assert created["modalities"] == ["text", "audio"]
    assert created["input_audio_format"] == "pcm16"
    assert "audio" not in created
    (done,) = events.of("response.done")
    assert done["response"]["output"][0]["content"][0]["type"] == "audio"


GA_UPDATE = {
    "type": "realtime",
    "instructions": "Be brief.",
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 16000},
            "turn_detection": {"type": "semantic_vad", "eagerness": "high"},
            "transcription": {"model": "whisper-tiny.en", "language": "en"},
            "noise_reduction": None,
        },
        "output": {"format": {"type": "audio/pcm"}, "voice": "joe", "speed": 1.2},
    },
    "tools": [{"type": "function", "name": "get_time", "description": "The time now"}],
    "tool_choice": "auto",
    "max_output_tokens": 200,
}


async def test_session_update_in_ga_and_beta_shapes(client: httpx.AsyncClient) -> None:
    s = await create_session(client)
    url = f"/api/sessions/{s.id}"
    r = await client.patch(url, headers=s.auth, json=GA_UPDATE)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["type"] == "realtime"
    assert got["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    assert got["audio"]["input"]["turn_detection"]["eagerness"] == "high"
    assert got["audio"]["output"]["speed"] == 1.2
    assert got["tools"][0]["name"] == "get_time"
    assert got["max_output_tokens"] == 200
    assert got["config"]["turn_detection"]["type"] == "semantic_vad"  # the flat view agrees
    # beta shape: the same keys by their old names
    beta = {"modalities": ["text"], "turn_detection": None, "voice": "joe", "speed": 1.0}
    r = await client.patch(url, headers=s.auth, json=beta)
    assert r.status_code == 200, r.text
    assert r.json()["output_modalities"] == ["text"]
    assert r.json()["audio"]["input"]["turn_detection"] is None
    # and as a client event, answered by session.updated in GA shape
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        update = {"type": "session.update", "session": {"type": "realtime", **GA_UPDATE}}
        await post_events(client, s, update)
        updated = await events.wait_for("session.updated")
        nursery.cancel_scope.cancel()
    assert updated["session"]["output_modalities"] == ["audio"]


@pytest.mark.parametrize(
    ("session", "status", "param", "says"),
    [
        ({"audio": {"output": {"voice": "alloy"}}}, 422, "audio.output.voice", "joe"),
        (
            {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
            422,
            "audio.input.format.type",
            "audio/pcm",
        ),
        (
            {"audio": {"input": {"transcription": {"model": "whisper-1"}}}},
            422,
            "audio.input.transcription.model",
            "whisper-tiny.en",
        ),
        (
            {"audio": {"input": {"noise_reduction": {"type": "near_field"}}}},
            422,
            "audio.input.noise_reduction",
            "null",
        ),
        ({"type": "transcription"}, 422, "type", "realtime"),
        ({"type": "realtime", "model": "gpt-realtime"}, 422, "model", "voxwire"),
        ({"type": "realtime", "modalities": ["text"]}, 422, "modalities", "output_modalities"),
        ({"type": "realtime", "bogus": 1}, 422, "bogus", "unknown"),
        ({"input_audio_format": "g711_ulaw"}, 422, "input_audio_format", "pcm16"),
        ({"output_modalities": ["audio", "text"]}, 422, "output_modalities", "['audio']"),
        ({"tools": [{"type": "mcp", "name": "x"}]}, 422, "tools[0].type", "function"),
        (
            {"tools": [{"name": "a"}], "tool_choice": {"type": "function", "name": "b"}},
            422,
            "tool_choice.name",
            "a",
        ),
        ({"audio": {"output": {"speed": 3}}}, 422, "audio.output.speed", "1.5"),
    ],
)
async def test_session_update_refuses_what_it_cannot_honour(
    client: httpx.AsyncClient, session: dict[str, Any], status: int, param: str, says: str
) -> None:
    s = await create_session(client)
    r = await client.patch(f"/api/sessions/{s.id}", headers=s.auth, json=session)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert says in error["message"], error
    # and nothing changed
    after = (await client.get(f"/api/sessions/{s.id}", headers=s.auth)).json()
    assert after["config"] == s.body["config"]


async def test_turn_detection_set_in_ga_shape_changes_behaviour(client: httpx.AsyncClient) -> None:
    """Push-to-talk via ``audio.input.turn_detection: null``: speech alone is no turn."""
    speech = corpus.utterance(SENTENCE, "piper").padded(0.3, 1.5)
    s = await create_session(client, turn_detection=None)
    r = await client.patch(
        f"/api/sessions/{s.id}",
        headers=s.auth,
        json={"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad"}}}},
    )
    assert r.status_code == 200, r.text
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        body = speech.samples.astype("<i2").tobytes()
        r = await client.post(f"/api/sessions/{s.id}/upload_audio", headers=s.auth, content=body)
        assert r.status_code == 204
        stopped = await events.wait_for("input_audio_buffer.speech_stopped", within=30)
        nursery.cancel_scope.cancel()
    assert stopped["reason"] == "silence"  # server_vad ended the turn, no commit was sent


async def test_text_only_responses_and_out_of_band_replies(client: httpx.AsyncClient) -> None:
    """``output_modalities: ["text"]`` gives text events and no audio; ``conversation:
    "none"`` with ``input`` answers from those items alone, keeps nothing, echoes
    ``metadata``."""
    s = await create_session(client, turn_detection=None)
    events, stream = Events(), Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        nursery.start_soon(stream.run, client, s)
        await events.wait_for("session.created")
        await post_events(
            client,
            s,
            say("Only text, please.", id="item_client_1"),
            {"type": "response.create", "response": {"output_modalities": ["text"]}},
        )
        text_done = await events.nth("response.done", 1)
        oob = {
            "type": "response.create",
            "event_id": "evt_oob",
            "response": {
                "conversation": "none",
                "metadata": {"topic": "side question"},
                "output_modalities": ["text"],
                "input": [
                    {"type": "item_reference", "id": "item_client_1"},
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "A side question."}],
                    },
                ],
            },
        }
        await post_events(client, s, oob)
        oob_done = await events.nth("response.done", 2)
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    assert stream.n == 0 or stream.voiced_since(0) == 0.0  # never spoke
    assert not events.of("output_audio_buffer.started")
    texts = events.of("response.output_text.done")
    assert [t["text"] for t in texts] == ["Only text, please.", "A side question."]
    assert text_done["response"]["output"][0]["content"] == [
        {"type": "output_text", "text": "Only text, please."}
    ]
    assert oob_done["response"]["metadata"] == {"topic": "side question"}
    conversation = (await client.get(f"/api/sessions/{s.id}/conversation", headers=s.auth)).json()
    ids = [i["id"] for i in conversation["items"]]
    assert ids[0] == "item_client_1"  # the client's id is kept
    assert len(ids) == 2  # the out-of-band reply was not added
    assert oob_done["response"]["output"][0]["id"] not in ids


async def test_items_create_retrieve_delete_in_order(client: httpx.AsyncClient) -> None:
    s = await create_session(client, turn_detection=None, responder="none")
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        await post_events(
            client,
            s,
            say("first", id="item_a"),
            say("third", id="item_c"),
            {**say("second", id="item_b"), "previous_item_id": "item_a"},
            {**say("zeroth", id="item_0"), "previous_item_id": "root"},
            {"type": "conversation.item.retrieve", "item_id": "item_b"},
            {"type": "conversation.item.delete", "item_id": "item_c"},
        )
        retrieved = await events.wait_for("conversation.item.retrieved")
        deleted = await events.wait_for("conversation.item.deleted")
        # refused whole: an unknown previous item, naming the client event
        r = await client.post(
            f"/api/sessions/{s.id}/events",
            headers=s.auth,
            json=[
                say("never", id="item_x"),
                {**say("nope"), "previous_item_id": "item_missing", "event_id": "evt_7"},
            ],
        )
        error = await events.wait_for("error")
        nursery.cancel_scope.cancel()
    assert r.status_code == 400
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (
        "item_not_found",
        "[1].previous_item_id",
    )
    assert error["error"]["event_id"] == "evt_7"
    assert retrieved["item"]["content"] == [{"type": "input_text", "text": "second"}]
    assert deleted["item_id"] == "item_c"
    added = events.of("conversation.item.added")
    assert added[2]["previous_item_id"] == "item_a"
    assert added[3]["previous_item_id"] is None
    conversation = (await client.get(f"/api/sessions/{s.id}/conversation", headers=s.auth)).json()
    assert [i["id"] for i in conversation["items"]] == ["item_0", "item_a", "item_b"]
    assert [m["content"] for m in conversation["messages"][1:]] == ["zeroth", "first", "second"]


async def test_audio_appended_in_events_is_a_turn(client: httpx.AsyncClient) -> None:
    """input_audio_buffer.append (base64 PCM16 in events, for event-only clients)."""
    speech = corpus.utterance(SENTENCE, "piper").padded(0.3, 0.3).samples
    s = await create_session(client, turn_detection=None, responder="none")
    events = Events()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        await events.wait_for("session.created")
        step = 16000  # 1 s per event
        for at in range(0, len(speech), step):
            pcm = speech[at : at + step].astype("<i2").tobytes()
            append = {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}
            await post_events(client, s, append)
        await post_events(client, s, {"type": "input_audio_buffer.commit"})
        completed = await events.wait_for(
            "conversation.item.input_audio_transcription.completed", within=30
        )
        r = await client.post(
            f"/api/sessions/{s.id}/events",
            headers=s.auth,
            json={"type": "input_audio_buffer.append", "audio": "not base64!"},
        )
        nursery.cancel_scope.cancel()
    assert wer(SENTENCE, completed["transcript"]) <= 0.25
    assert (r.status_code, r.json()["error"]["param"]) == (400, "[0].audio")


async def test_output_audio_buffer_clear_silences_and_truncates(client: httpx.AsyncClient) -> None:
    s = await create_session(client, turn_detection=None)
    long_text = (
        "This is a long reply that keeps on going, so that there is time to clear it, "
        "and it has a second clause, and a third one, and then some more words after that."
    )
    events, stream = Events(), Stream()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        nursery.start_soon(stream.run, client, s)
        await events.wait_for("session.created")
        await post_events(client, s, say(long_text), {"type": "response.create"})
        await events.wait_for("output_audio_buffer.started", within=30)
        with trio.fail_after(30):
            while stream.voiced_since(0) < 0.8:  # noqa: ASYNC110 - no event for this state
                await trio.sleep(0.05)
        await post_events(client, s, {"type": "output_audio_buffer.clear"})
        cleared_at = trio.current_time()
        done = await events.wait_for("response.done")
        truncated = await events.wait_for("conversation.item.truncated")
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert events.of("output_audio_buffer.cleared")
    assert not events.of("output_audio_buffer.stopped")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    assert 500 <= truncated["audio_end_ms"] < 6000
    # the stream fell silent: nothing voiced arrived well after the clear
    late = stream.received_by(cleared_at + 0.4)
    assert stream.voiced_since(late) == 0.0
    conversation = (await client.get(f"/api/sessions/{s.id}/conversation", headers=s.auth)).json()
    reply = conversation["items"][-1]
    assert reply["truncated"] is True
    assert reply["status"] == "incomplete"
    assert long_text.startswith(reply["content"][0]["transcript"])
    assert len(reply["content"][0]["transcript"]) < len(long_text)


async def test_ga_output_speed_and_modalities_change_the_reply(client: httpx.AsyncClient) -> None:
    """``audio.output.speed`` changes Piper's pace; session ``output_modalities: ["text"]``
    stops speech for every reply."""
    text = "The quick brown fox jumps over the lazy dog, and then it runs away into the woods."
    s = await create_session(client, turn_detection=None)
    events, stream = Events(), Stream()
    url = f"/api/sessions/{s.id}"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(events.run, client, s)
        nursery.start_soon(stream.run, client, s)
        await events.wait_for("session.created")
        lengths = []
        for n, speed in enumerate((1.0, 1.5), 1):
            r = await client.patch(
                url, headers=s.auth, json={"audio": {"output": {"speed": speed}}}
            )
            assert r.status_code == 200, r.text
            await post_events(client, s, say(text), {"type": "response.create"})
            done = await events.nth("response.done", n)
            lengths.append(done["response"]["audio_queued_ms"])
        r = await client.patch(url, headers=s.auth, json={"output_modalities": ["text"]})
        assert r.status_code == 200, r.text
        await post_events(client, s, say(text), {"type": "response.create"})
        quiet = await events.nth("response.done", 3)
        nursery.cancel_scope.cancel()
    assert lengths[1] < 0.8 * lengths[0], lengths
    assert quiet["response"]["output_modalities"] == ["text"]
    assert quiet["response"]["audio_queued_ms"] == 0
    assert quiet["response"]["output"][0]["content"][0] == {"type": "output_text", "text": text}


async def test_a_response_voice_there_is_not_is_refused(client: httpx.AsyncClient) -> None:
    s = await create_session(client, turn_detection=None)
    create = {"type": "response.create", "response": {"voice": "alloy"}}
    r = await client.post(f"/api/sessions/{s.id}/events", headers=s.auth, json=[say("Hi"), create])
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_value", "[1].response.voice")
    assert "joe" in error["message"]
