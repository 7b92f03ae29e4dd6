"""What users thought of the answers: captured conversations, their ratings, reports and exports."""

from .store import Conversation, FeedbackStore, Rating, Stored

__all__ = ["Conversation", "FeedbackStore", "Rating", "Stored"]
