"""The LangGraph peer: a one-node graph that echoes its input, offline (no model call)."""

from typing import TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict, total=False):
    input: str
    output: str


def step(state: State) -> State:
    return {"output": f"echo:{state.get('input', '')}"}


builder = StateGraph(State)
builder.add_node("step", step)
builder.add_edge(START, "step")
builder.add_edge("step", END)
graph = builder.compile()
