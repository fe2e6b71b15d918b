"""One module per tab, each holding its layout and its handlers: a handler class (over the shared
`app.studio.Studio`) and `build(shared)`, which makes the tab's components inside the current Blocks
and wires their events. What the tabs share is passed in explicitly (`app.tabs.shared.Shared`)."""
