from .event_to_video import EventToVideoOutput, EventToVideoPipeline

__all__ = ["EventToVideoOutput", "EventToVideoPipeline"]
