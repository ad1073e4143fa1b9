"""The PEFT method and task enums, with HF peft's string values (they appear in ``adapter_config.json``)."""
import enum

_ADDED_TYPES = set()


def add_peft_type(value):
    """Let ``PeftType(value)`` accept ``value``: the type of a method registered from outside this list (see
    :func:`mindpeft.utils.registry.register_peft_method`)."""
    _ADDED_TYPES.add(value)


class PeftType(str, enum.Enum):
    PROMPT_TUNING = "PROMPT_TUNING"
    P_TUNING = "P_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    LORA = "LORA"
    ADALORA = "ADALORA"
    ADAPTION_PROMPT = "ADAPTION_PROMPT"
    IA3 = "IA3"
    LN_TUNING = "LN_TUNING"
    LOHA = "LOHA"
    LOKR = "LOKR"
    VERA = "VERA"
    FOURIERFT = "FOURIERFT"
    HRA = "HRA"
    POLY = "POLY"
    MULTITASK_PROMPT_TUNING = "MULTITASK_PROMPT_TUNING"
    OFT = "OFT"
    BOFT = "BOFT"
    TRAINABLE_TOKENS = "TRAINABLE_TOKENS"

    @classmethod
    def _missing_(cls, value):
        """A member for an added type (not listed above, so not iterated)."""
        if not isinstance(value, str) or value not in _ADDED_TYPES:
            return None
        member = str.__new__(cls, value)
        member._name_ = member._value_ = value
        return member


class TaskType(str, enum.Enum):
    SEQ_CLS = "SEQ_CLS"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    CAUSAL_LM = "CAUSAL_LM"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"
