"""What every chat channel needs, whichever app it serves (WeCom today; Feishu, Slack or DingTalk
the same way): deduplicated deliveries, each user's recent turns, answers through the gateway's own
completion path under the bot's key, keyword feedback on the last answer, and an apology rather than
silence when no answer can be had (``chat``); bounded, expiring state (``store``); answers cut to an
app's byte limits (``text``). An integration (``server.integrations``) adds the app's protocol:
its crypto, message formats and delivery."""
