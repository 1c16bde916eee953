"""The conversation as the LLM sees it (pure: no server)."""

from __future__ import annotations

from app._conversation import Conversation, Item


def call(call_id: str, name: str = "get_time", status: str = "completed") -> Item:
    return Item(
        f"item_{call_id}",
        "assistant",
        type="function_call",
        call_id=call_id,
        name=name,
        arguments="{}",
        status=status,
    )  # type: ignore[arg-type]


def output(call_id: str) -> Item:
    return Item(
        f"out_{call_id}",
        "user",
        type="function_call_output",
        call_id=call_id,
        output='{"ok": true}',
    )


def test_calls_go_with_their_outputs_into_the_assistant_message() -> None:
    c = Conversation(50)
    c.add(Item("u1", "user", "Time and weather?"))
    c.add(Item("a1", "assistant", "Let me check."))
    c.add(call("c1"))
    c.add(call("c2", "get_weather"))
    c.add(output("c1"))
    c.add(output("c2"))
    messages = c.messages("Be brief.")
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[2]["content"] == "Let me check."
    assert [t["id"] for t in messages[2]["tool_calls"]] == ["c1", "c2"]
    assert [(m["role"], m["tool_call_id"]) for m in messages[3:]] == [
        ("tool", "c1"),
        ("tool", "c2"),
    ]


def test_a_call_without_its_output_or_an_unfinished_one_is_left_out() -> None:
    c = Conversation(50)
    c.add(Item("u1", "user", "Hi"))
    c.add(call("c1"))  # the client never answered
    c.add(call("c2", status="incomplete"))  # cut by a barge-in
    c.add(output("c2"))
    c.add(Item("a1", "assistant", ""))  # a reply cut before anything was heard
    c.add(Item("u2", "user", "Hello?"))
    messages = c.messages("")
    assert messages == [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello?"}]


def test_history_stays_bounded_and_an_orphaned_output_is_dropped() -> None:
    c = Conversation(3)
    c.add(call("c1"))
    c.add(output("c1"))
    c.add(Item("u1", "user", "one"))
    c.add(Item("u2", "user", "two"))  # pushes the call out: its output must go unsent
    assert [i.id for i in c.items] == ["out_c1", "u1", "u2"]
    assert c.messages("") == [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ]


def test_items_insert_after_a_previous_item_and_report_their_neighbour() -> None:
    c = Conversation(10)
    assert c.add(Item("a", "user", "a")) is None
    assert c.add(Item("c", "user", "c")) == "a"
    assert c.add(Item("b", "user", "b"), "a") == "a"
    assert c.add(Item("0", "user", "0"), "") is None
    assert [i.id for i in c.items] == ["0", "a", "b", "c"]
