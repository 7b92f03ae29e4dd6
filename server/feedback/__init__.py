"""What users thought of the answers: captured conversations, their ratings, reports and exports."""

from .store import Conversation, FeedbackStore, Rating, Stored

FEEDBACK_DB = ".feedback.db"  # in the adapters directory, unless --feedback-db names another database

__all__ = ["FEEDBACK_DB", "Conversation", "FeedbackStore", "Rating", "Stored"]
