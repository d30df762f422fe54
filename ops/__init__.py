"""Pipeline driver: deploy -> test -> destroy for one or more Pulumi stacks, through the Automation API.

Reusable: it drives any Pulumi project directory whose stacks export `connectivity` (router -> the result of
`overlay-node check --json`). `python -m ops --help` for usage.
"""
