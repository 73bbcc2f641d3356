"""The demo's tabs: each module builds one tab's components and wires them to the plain functions of
`vmoba.ui` (generation, attention_view, events_demo, motion_demo, speed)."""
