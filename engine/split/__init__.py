"""SFPrompt's split model: the splitter, the client runtime, the body server and the wire format."""
