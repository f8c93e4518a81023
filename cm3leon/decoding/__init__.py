"""Decoding: batched generation with classifier-free guidance, contrastive decoding (CD-K) and reranking."""

from cm3leon.decoding.channel import ChannelScorer, query_image
from cm3leon.decoding.contrastive import cdk_candidates, cdk_scores
from cm3leon.decoding.generate import (
    CancelCheck,
    ImageDecoder,
    ProgressCallback,
    decode_plan,
    generate,
    generate_image_codes,
    left_pad,
)
from cm3leon.decoding.guidance import StreamMixer, classifier_free_guidance, three_stream_guidance
from cm3leon.decoding.params import (
    CandidateResult,
    DecodingConfig,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
)
from cm3leon.decoding.plan import BatchPlan, GroupSpec, plan_batch
from cm3leon.decoding.processors import ModalityConstraint, SourceCopyPrior, StopCriteria, Temperature, TopK, TopP
from cm3leon.decoding.prompts import PromptStreams, document_prompt_ids, last_image_ids, mask_runs, prompt_streams
from cm3leon.decoding.rerank import (
    LikelihoodScorer,
    Scorer,
    WeightedSum,
    best_candidate,
    continuation_log_likelihoods,
    no_rerank,
    score_continuation,
)
from cm3leon.decoding.scheduler import RequestHandle, Scheduler, SchedulerConfig
from cm3leon.decoding.selector import TokenSelector, draw_uniforms

__all__ = [
    "BatchPlan",
    "CancelCheck",
    "ChannelScorer",
    "CandidateResult",
    "DecodingConfig",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "GroupSpec",
    "ImageDecoder",
    "LikelihoodScorer",
    "ModalityConstraint",
    "ProgressCallback",
    "PromptStreams",
    "RequestHandle",
    "SamplingParams",
    "Scheduler",
    "SchedulerConfig",
    "Scorer",
    "SourceCopyPrior",
    "StopCriteria",
    "StreamMixer",
    "Temperature",
    "TokenSelector",
    "TopK",
    "TopP",
    "WeightedSum",
    "best_candidate",
    "cdk_candidates",
    "cdk_scores",
    "classifier_free_guidance",
    "continuation_log_likelihoods",
    "decode_plan",
    "document_prompt_ids",
    "draw_uniforms",
    "generate",
    "generate_image_codes",
    "last_image_ids",
    "left_pad",
    "mask_runs",
    "no_rerank",
    "plan_batch",
    "prompt_streams",
    "query_image",
    "score_continuation",
    "three_stream_guidance",
]
