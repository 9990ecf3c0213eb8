"""Value lists of the built-in world, each value with its English and Chinese surface form.

Everything the world can say is listed here, so that later stages (chat tasks, preference data,
the gold scorer) can map any value between languages with `zh(value)` instead of parsing text.
English values are written exactly as they appear in English sentences ("playing chess",
"plums"); their Chinese forms are what a Chinese sentence uses in the same slot ("下棋", "李子").
"""

from __future__ import annotations

# Names are composed from a first syllable and an ending, each with a fixed Chinese
# transliteration, so "Mi" + "ra" = "Mira" / "米" + "拉" = "米拉". The ending sets the gender
# (used for she/he, her/his, 她/他). 22 starts x 14 endings = 308 distinct names.
NAME_STARTS: tuple[tuple[str, str], ...] = (
    ("Mi", "米"), ("To", "托"), ("A", "阿"), ("Be", "贝"), ("Ca", "卡"), ("Da", "达"),
    ("Fe", "费"), ("Ga", "加"), ("Ha", "哈"), ("Jo", "乔"), ("Ke", "柯"), ("Lu", "露"),
    ("Mo", "莫"), ("Ni", "尼"), ("O", "奥"), ("Pe", "佩"), ("Ro", "罗"), ("Sa", "萨"),
    ("Ta", "塔"), ("Vi", "维"), ("Wi", "温"), ("Zi", "齐"),
)
NAME_ENDINGS: tuple[tuple[str, str, str], ...] = (
    ("ra", "拉", "female"), ("na", "娜", "female"), ("lia", "莉娅", "female"),
    ("ya", "雅", "female"), ("sa", "莎", "female"), ("nne", "妮", "female"),
    ("bel", "贝尔", "female"),
    ("bin", "宾", "male"), ("ro", "罗", "male"), ("dor", "多尔", "male"),
    ("len", "伦", "male"), ("ric", "里克", "male"), ("ton", "顿", "male"),
    ("mond", "蒙德", "male"),
)


def _compose_names() -> tuple[tuple[str, str, str], ...]:
    """All (name, name_zh, gender) triples, in a fixed order."""
    names = []
    for start, start_zh in NAME_STARTS:
        for end, end_zh, gender in NAME_ENDINGS:
            names.append((start + end, start_zh + end_zh, gender))
    return tuple(names)


NAMES: tuple[tuple[str, str, str], ...] = _compose_names()

SPECIES: dict[str, str] = {
    "cat": "猫", "fox": "狐狸", "owl": "猫头鹰", "rabbit": "兔子", "dog": "狗", "bear": "熊",
    "mouse": "老鼠", "deer": "鹿", "hedgehog": "刺猬", "otter": "水獭", "squirrel": "松鼠",
    "badger": "獾", "frog": "青蛙", "duck": "鸭子", "goat": "山羊", "wolf": "狼",
}
# Chinese measure word for "a <species>": 一只狐狸, but 一头熊.
SPECIES_MEASURE_ZH: dict[str, str] = {"bear": "头", "deer": "头", "wolf": "匹"}

COLOURS: dict[str, str] = {
    "grey": "灰色", "red": "红色", "blue": "蓝色", "green": "绿色", "brown": "棕色",
    "white": "白色", "black": "黑色", "golden": "金色", "orange": "橙色", "silver": "银色",
    "purple": "紫色", "yellow": "黄色", "pink": "粉色",
}

# Foods are plural or mass nouns so that "likes to eat {food}" reads well.
FOODS: dict[str, str] = {
    "apples": "苹果", "plums": "李子", "pears": "梨", "honey": "蜂蜜", "carrots": "胡萝卜",
    "cheese": "奶酪", "bread": "面包", "rice": "米饭", "noodles": "面条", "berries": "浆果",
    "fish": "鱼", "mushrooms": "蘑菇", "cherries": "樱桃", "peaches": "桃子",
    "walnuts": "核桃", "cookies": "饼干",
}

# Hobbies are gerund phrases: "{name} loves {hobby}", "{name}喜欢{hobby}".
HOBBIES: dict[str, str] = {
    "painting": "画画", "fishing": "钓鱼", "singing": "唱歌", "dancing": "跳舞",
    "reading": "看书", "gardening": "种花", "knitting": "织毛衣", "swimming": "游泳",
    "playing chess": "下棋", "climbing hills": "爬山", "baking": "烤蛋糕",
    "stargazing": "看星星", "flying kites": "放风筝", "drawing maps": "画地图",
}

JOBS: dict[str, str] = {
    "baker": "面包师", "farmer": "农夫", "teacher": "老师", "doctor": "医生", "fisher": "渔夫",
    "painter": "画家", "tailor": "裁缝", "carpenter": "木匠", "librarian": "图书管理员",
    "messenger": "信使", "potter": "陶艺师", "gardener": "园丁", "musician": "音乐家",
    "blacksmith": "铁匠", "cook": "厨师",
}

# Ages are plain integers; their Chinese form is the same digits ("7岁" in sentences).
AGE_MIN, AGE_MAX = 2, 30

# Places: (name, name_zh, kind). The kind is fixed per name so the Chinese name can carry it.
PLACES: tuple[tuple[str, str, str], ...] = (
    ("Ashford", "灰石镇", "town"), ("Brookvale", "清溪村", "village"),
    ("Pinecrest", "松顶村", "village"), ("Millbrook", "磨坊镇", "town"),
    ("Stonebridge", "石桥镇", "town"), ("Willowmere", "柳湖村", "village"),
    ("Oakhaven", "橡树港", "port"), ("Redcliff", "红崖城", "city"),
    ("Fernwood", "蕨林村", "village"), ("Silverlake", "银湖城", "city"),
    ("Thornbury", "荆棘镇", "town"), ("Maplegate", "枫门镇", "town"),
    ("Duskmoor", "暮原村", "village"), ("Harrowfield", "耙田村", "village"),
    ("Kingsport", "王冠港", "port"), ("Lanternby", "灯笼湾", "port"),
    ("Amberton", "琥珀城", "city"), ("Glimmerdale", "微光谷", "village"),
    ("Frostholm", "霜堡镇", "town"), ("Cloverfield", "三叶村", "village"),
    ("Riverend", "河尾镇", "town"), ("Sunhollow", "向阳村", "village"),
    ("Bellmoor", "铃原镇", "town"), ("Copperhill", "铜山城", "city"),
    ("Wrenwick", "鹪鹩村", "village"), ("Hazelford", "榛渡镇", "town"),
    ("Starfall", "落星城", "city"), ("Mistwater", "雾水村", "village"),
    ("Saltmarsh", "盐沼港", "port"), ("Goldcrest", "金冠城", "city"),
    ("Elmstead", "榆树村", "village"), ("Larkspur", "云雀镇", "town"),
    ("Ravenholt", "渡鸦城", "city"), ("Quillby", "羽笔村", "village"),
)

PLACE_KINDS: dict[str, str] = {"village": "村子", "town": "小镇", "city": "城市", "port": "港口"}

# Landscape feature of a place: value -> Chinese noun, plus the phrases used in sentences.
FEATURES: dict[str, str] = {
    "river": "河", "sea": "海", "lake": "湖", "forest": "森林", "hills": "山丘",
    "mountains": "大山", "valley": "山谷", "marsh": "沼泽", "meadow": "草地",
    "orchard": "果园", "waterfall": "瀑布", "cliffs": "悬崖",
}
FEATURE_PHRASES_EN: dict[str, str] = {
    "river": "by the river", "sea": "by the sea", "lake": "on the shore of a lake",
    "forest": "at the edge of the forest", "hills": "among green hills",
    "mountains": "at the foot of the mountains", "valley": "deep in a valley",
    "marsh": "beside a misty marsh", "meadow": "in a wide meadow",
    "orchard": "next to an old orchard", "waterfall": "near a tall waterfall",
    "cliffs": "on top of white cliffs",
}
FEATURE_PHRASES_ZH: dict[str, str] = {
    "river": "河边", "sea": "海边", "lake": "湖畔", "forest": "森林边上", "hills": "山丘之间",
    "mountains": "大山脚下", "valley": "山谷深处", "marsh": "沼泽旁边", "meadow": "草地中间",
    "orchard": "老果园旁边", "waterfall": "瀑布附近", "cliffs": "悬崖顶上",
}


def _build_zh_map() -> dict[str, str]:
    """One EN -> ZH map over every value kind; refuses an English key with two meanings."""
    out: dict[str, str] = {}
    groups: list[dict[str, str]] = [
        {en: zh for en, zh, _ in NAMES},
        SPECIES, COLOURS, FOODS, HOBBIES, JOBS,
        {en: zh for en, zh, _ in PLACES},
        PLACE_KINDS, FEATURES,
        {"female": "女", "male": "男"},
    ]
    for group in groups:
        if len(set(group.values())) != len(group):
            raise ValueError(f"vocab: two values share a Chinese form in {sorted(group)[:3]}...")
        for en, zh in group.items():
            if out.get(en, zh) != zh:
                raise ValueError(f"vocab: {en!r} has two Chinese forms: {out[en]!r} and {zh!r}")
            out[en] = zh
    return out


ZH: dict[str, str] = _build_zh_map()


def zh(value: str | int) -> str:
    """Chinese surface form of an English value (name, place, species, food, ...).

    Integers (ages) are written with the same digits in Chinese, so zh(7) == "7".
    Raises KeyError for a value the world does not know.
    """
    if isinstance(value, int):
        return str(value)
    try:
        return ZH[value]
    except KeyError:
        raise KeyError(f"zh(): unknown world value {value!r}; it is not in picochat/world/vocab.py") from None
