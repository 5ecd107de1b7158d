"""An agent for a WorkerPool's workers to import: its price table is years out of date."""

import foldloop as fl

stale = fl.Agent(
    name="pricey",
    llm=fl.ScriptedLLM([fl.Reply(text="ok")]),
    limits=fl.Limits(max_cost_usd=1.0),
    pricing=fl.Pricing(as_of="2000-01-01", stale="warn"),
)
