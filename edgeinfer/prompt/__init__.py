"""The prompt layer: chat templates; compression (compress.py), context selection (context.py)
and history summaries (history.py), each pure with its token counter and models injected, and
each returning a PromptReport (report.py) of the tokens it removed."""
