"""The repair chatbot: turning transcripts into structured slots."""
