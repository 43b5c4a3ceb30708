"""A small multilingual corpus for training the test models' tokenizers.

Why it exists: the tiny test models need tokenizers whose vocabularies look like
real ones (English sub-words, CJK characters and words, Hangul syllables, code
symbols, emoji through bytes), so that tokenizer export, special-token handling
and Traditional Chinese / Korean / Japanese round-trips are exercised on text
that resembles what users chat in. A few kilobytes are enough to train a BPE
vocabulary of about a thousand tokens in well under a second.

``EXTENSION_WORDS`` are the words an "extended vocabulary" continually
pretrained (CP) model appends to the base vocabulary, the way Chinese and Korean
CP models do. Several of them use characters that appear rarely or never in
``CORPUS`` so that the extension really adds tokens.
"""

from __future__ import annotations

CORPUS = """\
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.
A chat vector is the difference between the weights of a chat model and its base model.
Adding the chat vector to a continually pretrained model gives it the ability to follow instructions.
We merge the models tensor by tensor, so the memory use stays small even for large checkpoints.
Please answer the question in one short sentence. Thank you for your help!
What is the capital of Taiwan? The capital of Taiwan is Taipei.
What is the capital of Korea? The capital of South Korea is Seoul.
What is the capital of Japan? The capital of Japan is Tokyo.
I would like a cup of tea, please. Would you like some coffee instead?
The weather today is sunny with a light breeze, and tomorrow it will rain.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 1,000,000 and 12:30.
Large language models predict the next token from the previous tokens.
The tokenizer splits text into tokens, and the model maps tokens to vectors.
Safety matters: the assistant should refuse harmful requests politely.
今天天氣很好，我們去公園散步吧。
臺灣是一個美麗的島嶼，臺北是臺灣的首都。
我喜歡喝珍珠奶茶，也喜歡吃牛肉麵和小籠包。
請問你叫什麼名字？我叫小明，很高興認識你。
這個模型可以用繁體中文回答問題，也可以用英文回答。
學習語言需要時間和耐心，每天練習一點點就會進步。
電腦、手機和網路已經成為現代生活的一部分。
聊天向量是聊天模型和基礎模型之間權重的差。
我們把模型一個張量一個張量地合併，所以記憶體用量很小。
请问你叫什么名字？我叫小明，很高兴认识你。
这个模型可以用简体中文回答问题，也可以用英文回答。
学习语言需要时间和耐心，每天练习一点点就会进步。
电脑、手机和网络已经成为现代生活的一部分。
今天天气很好，我们去公园散步吧。北京是中国的首都。
안녕하세요. 만나서 반갑습니다. 저는 학생입니다.
오늘 날씨가 정말 좋네요. 공원에 산책하러 갈까요?
한국의 수도는 서울입니다. 서울은 아주 큰 도시입니다.
저는 김치와 불고기를 좋아합니다. 한국 음식은 맛있어요.
이 모델은 한국어로 질문에 대답할 수 있습니다.
감사합니다. 좋은 하루 보내세요!
こんにちは。はじめまして、どうぞよろしくお願いします。
今日はいい天気ですね。公園に散歩に行きましょう。
日本の首都は東京です。東京はとても大きな都市です。
私はお茶とお寿司が好きです。ありがとうございます。
このモデルは日本語で質問に答えることができます。
def add(a, b):
    return a + b

for i in range(10):
    print(f"value: {i}")

class Vector:
    def __init__(self, x: float, y: float) -> None:
        self.x = x
        self.y = y

if (x > 0 && y < 10) { return x * y; } else { return -1; }
const items = [1, 2, 3].map((n) => n * 2);
{"name": "cvlocal", "version": "1.0", "tags": ["chat", "vector"]}
SELECT name, age FROM users WHERE age >= 18 ORDER BY name;
Emoji: 😀 😂 👍 🎉 ❤️ 🐶 🍜 🇹🇼 🚀 ✨ 你好 👋 안녕 👋
Mixed: 我在 Taipei 工作, I work in 台北. 서울 is in Korea. 東京 is in Japan.
Punctuation: « quotes » — dash – en dash … ellipsis ‘single’ “double” ¿Qué? ¡Hola!
Accents: café naïve résumé façade Ångström Straße Ελληνικά Русский язык.
"""

# Words appended to the vocabulary of an extended CP model: Traditional Chinese
# first, then Korean, then a few Japanese and Simplified Chinese words.
EXTENSION_WORDS = (
    "臺灣", "臺北", "高雄", "臺中", "臺南", "新竹", "花蓮", "嘉義", "澎湖", "金門",
    "颱風", "地震", "梅雨", "鳳梨酥", "滷肉飯", "蚵仔煎", "夜市", "捷運", "悠遊卡", "便當",
    "鬱金香", "麒麟", "鸚鵡", "龍眼", "蘋果", "葡萄", "檸檬", "鳳凰", "繁體字", "注音符號",
    "資訊", "軟體", "硬體", "網際網路", "伺服器", "資料庫", "演算法", "機器學習", "神經網路", "語言模型",
    "서울특별시", "부산", "인천", "대구", "제주도", "김치찌개", "떡볶이", "비빔밥", "삼겹살", "냉면",
    "대한민국", "인공지능", "컴퓨터", "프로그램", "데이터", "언어모델", "학교", "선생님", "친구", "가족",
    "北海道", "富士山", "新幹線", "寿司屋", "ラーメン", "东京塔", "长城", "熊猫",
)
